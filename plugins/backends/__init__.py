"""Built-in backend plugins."""

from nlframe import hookimpl


@hookimpl
def nlframe_register_backend(register):
    """Register the built-in backend plugins."""
