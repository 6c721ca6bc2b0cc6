"""Built-in objective plugins."""

from nlframe import hookimpl


@hookimpl
def nlframe_register_objective(register):
    """Register the built-in objective plugins."""
