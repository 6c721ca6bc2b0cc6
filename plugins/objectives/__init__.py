"""Built-in surprise objectives: ``dot``, ``l2``, ``huber``, ``lp``."""

from nlframe import hookimpl

from .dot import DotObjective
from .huber import HuberObjective
from .l2 import L2Objective
from .lp import LpObjective


@hookimpl
def nlframe_register_objective(register):
    """Register the built-in objective plugins."""
    register("dot", DotObjective)
    register("l2", L2Objective)
    register("huber", HuberObjective)
    register("lp", LpObjective)
