"""Per-token cross-entropy ``ℓ_i = logsumexp_v(z_iv) − z_i,y_i`` with a fused backward.

``F.cross_entropy`` builds three more ``N × V`` tensors after the logits: the
log-softmax it saves, the one-hot gradient of its NLL step (zero-filled) and
the log-softmax gradient. :func:`token_nll` saves the logits themselves and the
row log-normalisers ``lse_i`` and forms the one gradient the logits need,

    ∂ℓ/∂z_iv = g_i · (exp(z_iv − lse_i) − [v = y_i]),

in place in one buffer (on the CPU a reused one, :mod:`nlframe.buffers`). On the
CPU it works in row blocks of about ``_CPU_BLOCK_ELEMENTS`` values (512 KiB) so the
temporaries of ``logsumexp`` stay in cache and below the 1 MiB mmap threshold
(``nlframe.runtime``), in the allocator's reused heap: a block of 4 MiB was
page-faulted in afresh on every call and made the forward pass 2.3× slower (1,024 ×
15,000 logits on a 2-core CPU); elsewhere it takes all rows at once. At a vocabulary of
15,000 the head-to-head HOPE step takes 0.875× (truncated) and 0.965× (full inner
gradient) of its time with ``F.cross_entropy`` (docs/performance.md).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import buffers

__all__ = ["token_nll"]

_CPU_BLOCK_ELEMENTS = 1 << 17


def _row_blocks(z: Tensor) -> tuple[range, int]:
    """Row starts and block height: blocks of ``_CPU_BLOCK_ELEMENTS`` on the CPU, else one."""
    rows = z.shape[0]
    step = _CPU_BLOCK_ELEMENTS // max(1, z.shape[1]) if z.device.type == "cpu" else rows
    step = max(1, step)
    return range(0, rows, step), step


class _TokenNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z: Tensor, targets: Tensor) -> Tensor:
        lse = z.new_empty(z.shape[0])
        starts, step = _row_blocks(z)
        for a in starts:
            torch.logsumexp(z[a:a + step], 1, out=lse[a:a + step])
        ctx.save_for_backward(z, targets, lse)
        return lse - z.gather(1, targets[:, None])[:, 0]

    @staticmethod
    @once_differentiable
    def backward(ctx, g: Tensor) -> tuple[Tensor, None]:
        z, targets, lse = ctx.saved_tensors
        grad = buffers.empty(z.shape, z)
        starts, step = _row_blocks(z)
        for a in starts:
            block = grad[a:a + step]
            torch.sub(z[a:a + step], lse[a:a + step, None], out=block)
            block.exp_().mul_(g[a:a + step, None])
        grad.scatter_add_(1, targets[:, None], -g[:, None])
        return grad, None


def token_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """``−log softmax(logits)[i, targets_i]`` for each row ``i`` of ``logits (N, V)``.

    Equal to ``F.cross_entropy(logits, targets, reduction="none")`` (floating
    ``logits``, integer ``targets`` in ``[0, V)``; a target outside raises as
    ``Tensor.gather`` does); differentiable once, in ``logits``.
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"token_nll takes logits (N, V) and targets (N,); got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    if not logits.is_floating_point() or targets.is_floating_point():
        raise TypeError(f"token_nll takes floating logits and integer targets; got "
                        f"{logits.dtype} and {targets.dtype}")
    return _TokenNLL.apply(logits, targets.long())
