"""Built-in memory plugins: ``linear``, ``mlp``, ``residual-mlp``, ``module``."""

from nlframe import hookimpl

from .linear import LinearMemory
from .mlp import MLPMemory, ResidualMLPMemory
from .module import ModuleMemory


@hookimpl
def nlframe_register_memory(register):
    """Register the built-in memory plugins."""
    register("linear", LinearMemory)
    register("mlp", MLPMemory)
    register("residual-mlp", ResidualMLPMemory)
    register("module", ModuleMemory)
