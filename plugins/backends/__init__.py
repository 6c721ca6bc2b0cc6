"""Built-in scan backends: ``reference`` (the token loop) and ``chunked`` (chunk-parallel)."""

from nlframe import hookimpl

from .chunked import ChunkedBackend
from .reference import ReferenceBackend


@hookimpl
def nlframe_register_backend(register):
    """Register the built-in backend plugins."""
    register("reference", ReferenceBackend)
    register("chunked", ChunkedBackend)
