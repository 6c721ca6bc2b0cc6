"""Reused CPU buffers for large results: the scan tiles' parameter-sized tensors and the
loss's gradient of the logits.

A scan writes a fresh parameter-sized tensor per chunk (the next chunk's weights, a
tile end, a weight gradient), and the loss one logits-sized gradient a step. On Linux,
nlframe serves buffers larger than 1 MiB from ``mmap`` (``nlframe.runtime``, which keeps
the resident set near the live tensors), so each of them is page-faulted in again on
every step: about 0.55 ms per 2 MiB on a 2-core CPU, against 0.04 ms to fill a warm one.

:func:`empty` hands out the storage of an earlier buffer of the same size once nothing
but the pool refers to it (the storage's use count is 1: no tensor, view or tensor
saved by autograd holds it), and a fresh buffer otherwise. The pool keeps at most
``limit`` bytes of storages (1 GiB); past that, buffers are fresh as before. What it
keeps stays resident between steps: :meth:`BufferPool.clear` lets it go. Off the CPU,
below ``min_bytes`` (1 MiB), under ``torch.compile`` or with ``NLFRAME_BUFFER_POOL=0``
in the environment, :func:`empty` is ``torch.empty``.

:func:`linear` is ``F.linear`` without a bias whose output and weight gradient take
pooled buffers: an LM head's logits and the gradient of its vocabulary-sized weight.
"""

from __future__ import annotations

import collections
import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["BufferPool", "POOL", "empty", "linear"]

_use_count = getattr(torch._C, "_storage_Use_Count", None)


class BufferPool:
    """Storages by byte size, each handed out again once only the pool refers to it."""

    def __init__(self, limit: int = 1 << 30, min_bytes: int = 1 << 20,
                 enabled: bool = True) -> None:
        self.limit, self.min_bytes = limit, min_bytes
        self.enabled = enabled and _use_count is not None
        self.kept = 0  # bytes of the storages held
        self.reused = 0  # buffers handed out on an earlier buffer's storage
        self._rings: dict[int, collections.deque] = {}

    def serves(self, device: torch.device) -> bool:
        """Whether buffers on ``device`` can come from the pool here: enabled, on the CPU,
        outside ``torch.compile``."""
        return self.enabled and device.type == "cpu" and not torch.compiler.is_compiling()

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised contiguous tensor of ``shape``, on a free storage where one is."""
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < self.min_bytes or not self.serves(device):
            return torch.empty(shape, dtype=dtype, device=device)
        ring = self._rings.setdefault(nbytes, collections.deque())
        for _ in range(len(ring)):  # oldest first: the likeliest to be free
            storage = ring.popleft()
            if storage.nbytes() != nbytes:  # resized by a user of it: not ours to hand out
                self.kept -= nbytes
                continue
            ring.append(storage)
            if _use_count(storage._cdata) == 1:
                self.reused += 1
                return torch.empty(0, dtype=dtype, device=device).set_(storage, 0, shape)
        out = torch.empty(shape, dtype=dtype, device=device)
        if self.kept + nbytes <= self.limit:
            ring.append(out.untyped_storage())
            self.kept += nbytes
        return out

    def clear(self) -> None:
        """Let go of every storage (one still in use lives on with its tensors)."""
        self._rings.clear()
        self.kept = 0


POOL = BufferPool(enabled=os.environ.get("NLFRAME_BUFFER_POOL", "1") != "0")


def empty(shape: tuple[int, ...] | torch.Size, like: Tensor) -> Tensor:
    """:meth:`BufferPool.empty` of the shared pool :data:`POOL`, with ``like``'s dtype and
    device."""
    return POOL.empty(tuple(shape), like.dtype, like.device)


class _Linear(torch.autograd.Function):
    """``y = x Wᵀ`` with ``y`` and ``∂L/∂W = gᵀx`` in pooled buffers (``∂L/∂x = gW``)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:  # type: ignore[override]
        rows = x.reshape(-1, x.shape[-1])
        out = torch.mm(rows, weight.t(), out=empty((rows.shape[0], weight.shape[0]), x))
        ctx.save_for_backward(rows, weight)
        ctx.x_shape = x.shape
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        rows, weight = ctx.saved_tensors
        g = g.reshape(-1, g.shape[-1])
        gx = (g @ weight).view(ctx.x_shape) if ctx.needs_input_grad[0] else None
        gw = torch.mm(g.t(), rows, out=empty(weight.shape, weight)) \
            if ctx.needs_input_grad[1] else None
        return gx, gw


def linear(x: Tensor, weight: Tensor) -> Tensor:
    """``F.linear(x, weight)`` (no bias) whose output and weight gradient are pooled
    buffers, differentiable once; ``F.linear`` itself where the pool does not apply (see
    the module), under CPU autocast and for mixed dtypes."""
    if not (POOL.serves(x.device) and weight.device == x.device and x.dtype == weight.dtype
            and not torch.is_autocast_enabled("cpu")):
        return F.linear(x, weight)
    return _Linear.apply(x, weight)
