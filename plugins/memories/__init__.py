"""Built-in memory plugins."""

from nlframe import hookimpl


@hookimpl
def nlframe_register_memory(register):
    """Register the built-in memory plugins."""
