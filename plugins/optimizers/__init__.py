"""Built-in update rules (optimizers): the same rule writes fast weights inside
a scan and trains slow weights through :class:`nlframe.optim.Optimizer`.

Rules are chains of small transforms (:mod:`.transforms`, :mod:`.newton_schulz`)
composed with :func:`.base.chain` / :func:`.base.partition`.
"""

from nlframe import hookimpl

from .adam import Adam, AdamW
from .delta_momentum import DeltaMomentum
from .dgd import DGD
from .dmgd import DMGD
from .m3 import M3
from .momentum import Momentum
from .muon import Muon
from .nonlinear_output import NonlinearOutput
from .preconditioned_momentum import PreconditionedMomentum
from .sgd import SGD

RULES = {
    "sgd": SGD,
    "momentum": Momentum,
    "adam": Adam,
    "adamw": AdamW,
    "muon": Muon,
    "preconditioned-momentum": PreconditionedMomentum,
    "delta-momentum": DeltaMomentum,
    "dmgd": DMGD,
    "nonlinear-output": NonlinearOutput,
    "dgd": DGD,
    "m3": M3,
}


@hookimpl
def nlframe_register_optimizer(register):
    """Register the built-in update rules."""
    for name, cls in RULES.items():
        register(name, cls)
