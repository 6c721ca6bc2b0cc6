"""Built-in scan backends: ``reference`` (the token loop), ``chunked`` (chunk-parallel),
``compiled`` (the chunked forms through ``torch.compile``) and ``triton`` (fused Triton
kernels; extra ``nlframe[triton]``)."""

from nlframe import hookimpl

from .chunked import ChunkedBackend
from .compiled import CompiledBackend
from .reference import ReferenceBackend
from .triton_backend import TritonBackend


@hookimpl
def nlframe_register_backend(register):
    """Register the built-in backend plugins."""
    register("reference", ReferenceBackend)
    register("chunked", ChunkedBackend)
    register("compiled", CompiledBackend)
    register("triton", TritonBackend)
