"""Built-in block plugins."""

from nlframe import hookimpl


@hookimpl
def nlframe_register_block(register):
    """Register the built-in block plugins."""
