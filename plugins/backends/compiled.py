"""The ``compiled`` backend: the chunked forms through ``torch.compile``.

It computes exactly what ``chunked`` computes (the same functions, traced), as one
graph per request shape: ``fullgraph=True``, so a graph break on the hot path is an
error, never a silent return to eager code. Dynamo guards on what the chunked code
branches on — tensor shapes, dtypes, devices, which inputs need gradients, the
plugin types and the modes of the request — so a later call of the same
configuration reuses the compiled code, and a new configuration compiles once
(seconds to a minute on a CPU, where inductor generates C++). The number of
configurations kept is ``NLFRAME_COMPILE_LIMIT`` (default 64): past it a call
raises instead of running eagerly behind the backend's name.

``auto`` never prefers it to ``chunked`` (lower priority): ask for it with
``backend="compiled"`` or ``NLFRAME_BACKEND=compiled``. ``NLFRAME_COMPILE_BACKEND``
names the ``torch.compile`` backend (default ``inductor``; ``aot_eager`` traces and
runs the same graphs without generating code, for debugging).
"""

from __future__ import annotations

import copy
import functools
import os
import shutil

import torch
from torch import Tensor

from nlframe.interfaces import Backend, Objective, ScanRequest
from nlframe.level import MemoryState

from .chunked import chunked_scan, unsupported_reason

COMPILE_LIMIT = 64
"""Default number of compiled configurations (``NLFRAME_COMPILE_LIMIT``)."""


def compile_backend() -> str:
    """The ``torch.compile`` backend in use (``NLFRAME_COMPILE_BACKEND``, default inductor)."""
    return os.environ.get("NLFRAME_COMPILE_BACKEND", "inductor") or "inductor"


def compile_limit() -> int:
    """The most configurations compiled before a call raises (``NLFRAME_COMPILE_LIMIT``)."""
    value = os.environ.get("NLFRAME_COMPILE_LIMIT", "")
    try:
        return int(value) if value else COMPILE_LIMIT
    except ValueError:
        raise ValueError(f"NLFRAME_COMPILE_LIMIT must be an integer, got {value!r}") from None


def _scan_tensors(request: ScanRequest, tile: int) -> tuple[Tensor, MemoryState]:
    """``chunked_scan`` under a code object of its own, so that the compile cache and its
    limit count this backend's configurations only."""
    return chunked_scan(request, tile=tile)


def _started(request: ScanRequest) -> ScanRequest:
    """``request`` with its state's token count ``step`` reduced to what the chunk forms
    branch on: the position ``p`` in the open chunk plus whether a chunk before it was
    written (``step' = p + [step > p]``, so ``step' = 0``, ``step' > 0`` and
    ``step' > p`` hold exactly when they hold for ``step``). Dynamo specialises on
    ints: the real count would compile every piece of a stream anew."""
    state = request.state
    step = state.position + int(state.step > state.position)
    if step == state.step:
        return request
    traced = copy.copy(request)
    traced.state = copy.copy(state)
    traced.state.step = step
    return traced


@functools.lru_cache(maxsize=None)
def _compiled(backend: str):
    return torch.compile(_scan_tensors, fullgraph=True, dynamic=False, backend=backend)


def _cpu_compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


class CompiledBackend(Backend):
    """``chunked``'s chunk forms compiled by ``torch.compile`` (module docstring): per tile
    ``W_j = D_j W_b + c_j S_b − Σ_{i≤j} A_{ji} g_i`` (docs/concepts.md chunk form), the
    same combinations and the same results as ``chunked`` within float tolerance."""

    priority = 5
    tile: int = 32
    """Tile length of the compiled graphs (every tile is unrolled into the graph; the
    compile times and speed-ups of docs/performance.md were measured at 32)."""

    def unavailable_reason(self) -> str | None:
        try:
            import torch._dynamo as dynamo
        except ImportError as e:  # pragma: no cover - every supported torch has it
            return f"torch._dynamo cannot be imported: {e}"
        if not dynamo.is_dynamo_supported():
            import sys
            return f"torch.compile does not support Python {sys.version.split()[0]} in this torch"
        if compile_backend() == "inductor" and _cpu_compiler() is None:
            return "inductor needs a C++ compiler on CPU (none of $CXX, c++, g++, clang++ found)"
        return None

    def supports(self, request: ScanRequest) -> str | None:
        reason = unsupported_reason(request)
        if reason is not None:
            return reason
        if type(request.objective).grad is Objective.grad:
            return (f"objective {request.names.get('objective')!r} has no closed-form grad: its "
                    "default, autograd of loss, cannot be traced into the graph (use 'chunked')")
        if request.q.is_cuda and compile_backend() == "inductor":
            try:
                import triton  # noqa: F401
            except ImportError:
                return "inductor needs triton for CUDA tensors (pip install triton)"
        return None

    def scan(self, request: ScanRequest) -> tuple[Tensor, MemoryState]:
        import torch._dynamo.config as dynamo_config
        import torch._dynamo.exc as dynamo_exc
        limit = compile_limit()
        try:
            with dynamo_config.patch(recompile_limit=limit, fail_on_recompile_limit_hit=True):
                y, state = _compiled(compile_backend())(_started(request), self.tile)
            state.step = request.state.step + request.q.shape[2]
            return y, state
        except dynamo_exc.FailOnRecompileLimitHit as e:
            raise RuntimeError(
                f"compiled backend: {limit} configurations (shapes, dtypes, modes) are compiled "
                "already and this call needs another recompile; raise NLFRAME_COMPILE_LIMIT, feed "
                "fewer distinct shapes (e.g. equal stream pieces) or use backend='chunked'") from e
        except dynamo_exc.Unsupported as e:
            names = ", ".join(f"{k} {v!r}" for k, v in sorted(request.names.items()))
            raise ValueError(f"compiled backend: torch.compile cannot trace this scan ({names}) "
                             f"in one graph: {str(e).splitlines()[0]}; use backend='chunked'") from e
