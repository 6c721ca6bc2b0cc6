"""Built-in block plugins."""

from nlframe import hookimpl

from .attention import Attention
from .lm import LM
from .mlp import MLP


@hookimpl
def nlframe_register_block(register):
    """Register the built-in block plugins."""
    register("lm", LM)
    register("attention", Attention)
    register("mlp", MLP)
