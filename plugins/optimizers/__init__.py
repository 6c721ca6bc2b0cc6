"""Built-in update rules (optimizers): the same rule writes fast weights inside
a scan and trains slow weights through :class:`nlframe.optim.Optimizer`."""

from nlframe import hookimpl

from .momentum import Momentum


@hookimpl
def nlframe_register_optimizer(register):
    """Register the built-in update rules."""
    register("momentum", Momentum)
