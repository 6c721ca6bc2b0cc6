"""Built-in data plugins."""

from nlframe import hookimpl


@hookimpl
def nlframe_register_data(register):
    """Register the built-in data plugins."""
