"""Built-in block plugins."""

from nlframe import hookimpl

from .attention import Attention
from .cms import CMS
from .deltanet import DeltaNet
from .hope import Hope, HopeAttention
from .linear_attention import LinearAttention
from .lm import LM
from .mlp import MLP
from .self_mod_titans import SelfModTitans
from .titans import Titans


@hookimpl
def nlframe_register_block(register):
    """Register the built-in block plugins."""
    register("lm", LM)
    register("attention", Attention)
    register("mlp", MLP)
    register("linear-attention", LinearAttention)
    register("deltanet", DeltaNet)
    register("titans", Titans)
    register("cms", CMS)
    register("self-mod-titans", SelfModTitans)
    register("hope", Hope)
    register("hope-attention", HopeAttention)
