"""Fused forward and backward kernels of the classic linear-memory level.

The level (docs/concepts.md; Titans arXiv 2501.00663): per (batch, head) a state
``W (Dv×Dk)``, momentum ``S (Dv×Dk)`` and chunk-start parameters ``Wc (Dv×Dk)``; with
chunk size ``C`` and start position ``p`` (tokens already in the open chunk), token ``t``::

    Wc ← W                     if (p + t) mod C = 0   (a chunk opens)
    δ_t = a·(Wc k_t) + b·v_t                          (∂ℓ/∂pred: l2 (1, −1), dot (0, −1))
    g_t = δ_t k_tᵀ
    S ← η_t S − θ_t g_t,   W ← (1 − α_t) W + S
    y_t = W q_t                                       (read after the write)

**Blocks.** Row ``i`` of ``W``, ``S`` and ``Wc`` depends only on row ``i`` of ``Wc`` (δ_i
needs ``Wc[i, :]`` only), so the grid is ``(B·H, cdiv(Dv, BV))``: each program holds a
``BV × BK`` block of rows of ``W``, ``S``, ``Wc`` in registers (``BK`` = ``Dk`` rounded up
to a power of two, the padding masked) and loops over the ``T`` tokens, reading
``q_t, k_t`` whole and ``v_t`` at its rows. Everything accumulates in float32.
Quantities summed over all rows (``‖δ_t‖²``, ``dq``, ``dk``, ``dθ``, ``dα``, ``dη``) are
written as one partial per V-block and summed in torch.

**Checkpoints.** The forward stores ``(W, S, Wc)`` before every ``CK``-th token
(``CK`` a constexpr, about ``√T``, at least 16). The backward walks the segments of
``CK`` tokens in reverse: it reloads the segment's checkpoint, recomputes its tokens
storing ``W_{t−1}, S_{t−1}`` in a per-(b, h) scratch buffer (``Wc`` at token ``t`` is
the checkpoint's, or ``W_{s−1}`` of the token ``s`` of the segment that opened its
chunk), then runs the adjoint recurrence backwards over the segment. Extra memory:
``3·⌈T/CK⌉ + 2·CK`` matrices per (b, h).

**Backward** of one token (``dW, dS, dWc``: running adjoints of ``W_t, S_t, Wc``)::

    dW += dy_t q_tᵀ;   dq_t = W_tᵀ dy_t
    dS_tot = dS + dW
    dα_t = −⟨dW, W_{t−1}⟩;   dW ← (1 − α_t) dW
    dη_t = ⟨dS_tot, S_{t−1}⟩;  dS ← η_t dS_tot
    dθ_t = −⟨dS_tot, g_t⟩;   dg = −θ_t dS_tot
    dδ = dg k_t;  dk_t = dgᵀ δ_t + a·Wcᵀ dδ;  dWc += a·dδ k_tᵀ;  dv_t = b·dδ
    dW += dWc, dWc ← 0         if token t opened its chunk (Wc = W_{t−1})

after the first token the adjoints are the gradients of the initial ``W, S, Wc``.

The kernels are plain functions decorated by :func:`kernels` on first use:
``triton.jit`` reads ``TRITON_INTERPRET`` when it decorates, so the flag in force at
the launch (1: run on CPU tensors through Triton's interpreter) picks the compiled
or the interpreted version.
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.language.standard import _sum_combine as _add

from .common import per_mode

# Sums are written ``tl.reduce(x, axis, _add)`` with the combine function of ``tl.sum``:
# the interpreter recognises it and sums with numpy, and, unlike ``tl.sum`` (itself a
# jit function, decorated when triton is imported), it is never called, so interpreted
# kernels run even when triton was imported before TRITON_INTERPRET was set.

MAX_BLOCK = 2048
"""Most elements of one ``BV × BK`` register block (``BV ≤ 32``): head dims 64 and 128
give blocks of 32 × 64 and 16 × 128."""


def _forward_kernel(q, k, v, lr, decay, mom, W0, S0, Wc0,
                    y, W_out, S_out, Wc_out, sq, ckpt,
                    T, Dk, Dv, pos0, C, a, b, NVB, NS,
                    BK: tl.constexpr, BV: tl.constexpr, CK: tl.constexpr, SAVE: tl.constexpr):
    """Program ``(bh, vb)``: rows ``vb·BV …`` of head ``bh`` through all ``T`` tokens;
    writes ``y_t`` rows, ``‖δ_t‖²`` of its rows to ``sq[bh, vb, t]``, the final state and
    (``SAVE``) the checkpoints ``ckpt[bh, seg] = (W, S, Wc)`` before token ``seg·CK``."""
    bh = tl.program_id(0).to(tl.int64)
    vb = tl.program_id(1)
    rv = vb * BV + tl.arange(0, BV)
    rk = tl.arange(0, BK)
    mv, mk = rv < Dv, rk < Dk
    m2 = mv[:, None] & mk[None, :]
    mat = rv[:, None] * Dk + rk[None, :]  # this block inside one (Dv, Dk) matrix
    DD = Dv * Dk
    W = tl.load(W0 + bh * DD + mat, mask=m2, other=0.0)
    S = tl.load(S0 + bh * DD + mat, mask=m2, other=0.0)
    Wc = tl.load(Wc0 + bh * DD + mat, mask=m2, other=0.0)
    for seg in range(NS):
        t0 = seg * CK
        if SAVE:
            base = ckpt + (bh * NS + seg) * 3 * DD
            tl.store(base + mat, W, mask=m2)
            tl.store(base + DD + mat, S, mask=m2)
            tl.store(base + 2 * DD + mat, Wc, mask=m2)
        for t in range(t0, tl.minimum(t0 + CK, T)):
            row = bh * T + t
            kt = tl.load(k + row * Dk + rk, mask=mk, other=0.0)
            qt = tl.load(q + row * Dk + rk, mask=mk, other=0.0)
            vt = tl.load(v + row * Dv + rv, mask=mv, other=0.0)
            theta = tl.load(lr + row)
            alpha = tl.load(decay + row)
            eta = tl.load(mom + row)
            Wc = tl.where((pos0 + t) % C == 0, W, Wc)
            delta = a * tl.reduce(Wc * kt[None, :], 1, _add) + b * vt
            tl.store(sq + (bh * NVB + vb) * T + t, tl.reduce(delta * delta, 0, _add))
            S = eta * S - theta * (delta[:, None] * kt[None, :])
            W = (1.0 - alpha) * W + S
            tl.store(y + row * Dv + rv, tl.reduce(W * qt[None, :], 1, _add), mask=mv)
    tl.store(W_out + bh * DD + mat, W, mask=m2)
    tl.store(S_out + bh * DD + mat, S, mask=m2)
    tl.store(Wc_out + bh * DD + mat, Wc, mask=m2)


def _backward_kernel(q, k, v, lr, decay, mom, dy, dW_T, dS_T, dWc_T, ckpt, scratch,
                     dq_part, dk_part, dv, dgate_part, dW0, dS0, dWc0,
                     T, Dk, Dv, pos0, C, a, b, NVB, NS,
                     BK: tl.constexpr, BV: tl.constexpr, CK: tl.constexpr):
    """Program ``(bh, vb)``: the adjoint recurrence (module docstring) of its rows, segment
    by segment from the last; ``dv`` rows directly, ``dq, dk, (dθ, dα, dη)`` as this block's
    partials ``dq_part[bh, vb, t]``, ``dk_part[bh, vb, t]``, ``dgate_part[bh, vb, :, t]``."""
    bh = tl.program_id(0).to(tl.int64)
    vb = tl.program_id(1)
    rv = vb * BV + tl.arange(0, BV)
    rk = tl.arange(0, BK)
    mv, mk = rv < Dv, rk < Dk
    m2 = mv[:, None] & mk[None, :]
    mat = rv[:, None] * Dk + rk[None, :]
    DD = Dv * Dk
    part = bh * NVB + vb
    dW = tl.load(dW_T + bh * DD + mat, mask=m2, other=0.0)
    dS = tl.load(dS_T + bh * DD + mat, mask=m2, other=0.0)
    dWc = tl.load(dWc_T + bh * DD + mat, mask=m2, other=0.0)
    keep = scratch + bh * (2 * CK) * DD  # [2j]: W_{t0+j−1}, [2j+1]: S_{t0+j−1}
    for i in range(NS):
        seg = NS - 1 - i
        t0 = seg * CK
        n = tl.minimum(t0 + CK, T) - t0
        base = ckpt + (bh * NS + seg) * 3 * DD
        W = tl.load(base + mat, mask=m2, other=0.0)
        S = tl.load(base + DD + mat, mask=m2, other=0.0)
        Wck = tl.load(base + 2 * DD + mat, mask=m2, other=0.0)
        Wc = Wck
        for j in range(n):  # recompute the segment, keeping each token's input state
            t = t0 + j
            row = bh * T + t
            tl.store(keep + (2 * j) * DD + mat, W, mask=m2)
            tl.store(keep + (2 * j + 1) * DD + mat, S, mask=m2)
            kt = tl.load(k + row * Dk + rk, mask=mk, other=0.0)
            vt = tl.load(v + row * Dv + rv, mask=mv, other=0.0)
            theta = tl.load(lr + row)
            alpha = tl.load(decay + row)
            eta = tl.load(mom + row)
            Wc = tl.where((pos0 + t) % C == 0, W, Wc)
            delta = a * tl.reduce(Wc * kt[None, :], 1, _add) + b * vt
            S = eta * S - theta * (delta[:, None] * kt[None, :])
            W = (1.0 - alpha) * W + S
        tl.debug_barrier()
        for r in range(n):  # the adjoint recurrence, last token first
            j = n - 1 - r
            t = t0 + j
            row = bh * T + t
            Wp = tl.load(keep + (2 * j) * DD + mat, mask=m2, other=0.0)
            Sp = tl.load(keep + (2 * j + 1) * DD + mat, mask=m2, other=0.0)
            pos = (pos0 + t) % C
            o = j - pos  # index in this segment of the token that opened t's chunk
            Wo = tl.load(keep + 2 * tl.maximum(o, 0) * DD + mat, mask=m2, other=0.0)
            Wc = tl.where(o >= 0, Wo, Wck)
            kt = tl.load(k + row * Dk + rk, mask=mk, other=0.0)
            qt = tl.load(q + row * Dk + rk, mask=mk, other=0.0)
            vt = tl.load(v + row * Dv + rv, mask=mv, other=0.0)
            dyt = tl.load(dy + row * Dv + rv, mask=mv, other=0.0)
            theta = tl.load(lr + row)
            alpha = tl.load(decay + row)
            eta = tl.load(mom + row)
            delta = a * tl.reduce(Wc * kt[None, :], 1, _add) + b * vt
            g = delta[:, None] * kt[None, :]
            St = eta * Sp - theta * g
            Wt = (1.0 - alpha) * Wp + St
            dW += dyt[:, None] * qt[None, :]
            dqt = tl.reduce(Wt * dyt[:, None], 0, _add)
            tl.store(dq_part + (part * T + t) * Dk + rk, dqt, mask=mk)
            dS_tot = dS + dW
            tl.store(dgate_part + (part * 3 + 1) * T + t, -tl.reduce(dW * Wp, None, _add))
            dW = (1.0 - alpha) * dW
            tl.store(dgate_part + (part * 3 + 2) * T + t, tl.reduce(dS_tot * Sp, None, _add))
            dS = eta * dS_tot
            tl.store(dgate_part + (part * 3 + 0) * T + t, -tl.reduce(dS_tot * g, None, _add))
            dg = -theta * dS_tot
            ddelta = tl.reduce(dg * kt[None, :], 1, _add)
            dkt = (tl.reduce(dg * delta[:, None], 0, _add)
                   + a * tl.reduce(Wc * ddelta[:, None], 0, _add))
            tl.store(dk_part + (part * T + t) * Dk + rk, dkt, mask=mk)
            tl.store(dv + row * Dv + rv, b * ddelta, mask=mv)
            dWc += a * (ddelta[:, None] * kt[None, :])
            opened = pos == 0
            dW = tl.where(opened, dW + dWc, dW)
            dWc = tl.where(opened, 0.0, dWc)
        tl.debug_barrier()  # the next segment overwrites the scratch rows
    tl.store(dW0 + bh * DD + mat, dW, mask=m2)
    tl.store(dS0 + bh * DD + mat, dS, mask=m2)
    tl.store(dWc0 + bh * DD + mat, dWc, mask=m2)


_JIT: dict[bool, tuple] = {}


def kernels():
    """``(forward, backward)`` decorated by ``triton.jit`` for the current interpreter flag."""
    return per_mode(_JIT, lambda: (triton.jit(_forward_kernel), triton.jit(_backward_kernel)))


def block_sizes(dim_k: int, dim_v: int, block_v: int | None = None) -> tuple[int, int]:
    """``(BK, BV)``: ``Dk`` rounded up to a power of two; ``BV ≤ 32`` rows with
    ``BV·BK ≤`` :data:`MAX_BLOCK` (``block_v``, a power of two, overrides it)."""
    BK = triton.next_power_of_2(dim_k)
    if block_v is not None:
        if block_v < 1 or block_v & (block_v - 1):
            raise ValueError(f"block_v must be a power of two, got {block_v}")
        return BK, block_v
    return BK, max(1, min(triton.next_power_of_2(dim_v), 32, MAX_BLOCK // BK))


def num_warps(BK: int, BV: int) -> int:
    """8 warps for the largest blocks (no register spills in the backward at ``BK = 128``
    on sm_90), else 4."""
    return 8 if BK * BV >= MAX_BLOCK else 4


def checkpoint_interval(T: int) -> int:
    """``CK``: ``√T`` rounded up to a power of two, in [16, 128] (checkpoints and scratch
    cost ``3⌈T/CK⌉ + 2CK`` matrices per head)."""
    return min(128, max(16, triton.next_power_of_2(math.isqrt(max(T - 1, 0)) + 1)))


def _on(x: Tensor):
    """Launch on ``x``'s CUDA device (Triton launches on the current one)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


class LinearRecurrent(torch.autograd.Function):
    """The level on ``(BH, T, ·)`` float32 contiguous tensors (module docstring).

    ``forward(q, k, v, θ, α, η, W0, S0, Wc0, p, C, a, b, BV, save)`` →
    ``y (BH, T, Dv)``, final ``W, S, Wc (BH, Dv, Dk)`` and ``‖δ_t‖² (BH, T)`` (not
    differentiable); ``save``: keep the checkpoints for a backward."""

    @staticmethod
    def forward(ctx, q, k, v, lr, decay, mom, W0, S0, Wc0, position, chunk, a, b, block_v, save):
        BH, T, Dk = q.shape
        Dv = v.shape[-1]
        BK, BV = block_sizes(Dk, Dv, block_v)
        CK = checkpoint_interval(T)
        NVB, NS = triton.cdiv(Dv, BV), triton.cdiv(T, CK)
        y = q.new_empty(BH, T, Dv)
        W, S, Wc = (torch.empty_like(W0) for _ in range(3))
        sq = q.new_empty(BH, NVB, T)
        ckpt = q.new_empty(BH, NS, 3, Dv, Dk) if save else q.new_empty(1)
        fwd, _ = kernels()
        with _on(q):
            fwd[(BH, NVB)](q, k, v, lr, decay, mom, W0, S0, Wc0, y, W, S, Wc, sq, ckpt,
                           T, Dk, Dv, position, chunk, float(a), float(b), NVB, NS,
                           BK=BK, BV=BV, CK=CK, SAVE=save, num_warps=num_warps(BK, BV))
        if save:
            ctx.save_for_backward(q, k, v, lr, decay, mom, ckpt)
        ctx.meta = (position, chunk, float(a), float(b), BK, BV, CK, NVB, NS)
        sq = sq.sum(1)
        ctx.mark_non_differentiable(sq)
        return y, W, S, Wc, sq

    @staticmethod
    def backward(ctx, dy, dW, dS, dWc, _dsq):
        q, k, v, lr, decay, mom, ckpt = ctx.saved_tensors
        position, chunk, a, b, BK, BV, CK, NVB, NS = ctx.meta
        BH, T, Dk = q.shape
        Dv = v.shape[-1]
        dy, dW, dS, dWc = (x.float().contiguous() for x in (dy, dW, dS, dWc))
        scratch = q.new_empty(BH, 2 * CK, Dv, Dk)
        dq_part, dk_part = q.new_empty(BH, NVB, T, Dk), q.new_empty(BH, NVB, T, Dk)
        dgate_part = q.new_empty(BH, NVB, 3, T)
        dv = torch.empty_like(v)
        dW0, dS0, dWc0 = (torch.empty_like(dW) for _ in range(3))
        _, bwd = kernels()
        with _on(q):
            bwd[(BH, NVB)](q, k, v, lr, decay, mom, dy, dW, dS, dWc, ckpt, scratch,
                           dq_part, dk_part, dv, dgate_part, dW0, dS0, dWc0,
                           T, Dk, Dv, position, chunk, a, b, NVB, NS, BK=BK, BV=BV, CK=CK,
                           num_warps=num_warps(BK, BV))
        dlr, ddecay, dmom = dgate_part.sum(1).unbind(1)
        return (dq_part.sum(1), dk_part.sum(1), dv, dlr, ddecay, dmom, dW0, dS0, dWc0,
                None, None, None, None, None, None)


def linear_recurrent(q: Tensor, k: Tensor, v: Tensor, lr: Tensor, decay: Tensor, mom: Tensor,
                     W0: Tensor, S0: Tensor, Wc0: Tensor, *, position: int, chunk_size: int,
                     affine: tuple[float, float], block_v: int | None = None):
    """The level on ``(B, H, ·)`` tensors: q, k ``(B, H, T, Dk)``, v ``(B, H, T, Dv)``, gates
    ``(B, H, T)``, state ``(B, H, Dv, Dk)``; computed in float32, differentiable in every
    tensor. Returns ``y``, final ``W, S, Wc`` (in q's dtype) and ``‖δ_t‖² (B, H, T)``
    (float32, not differentiable)."""
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]

    def flat(x: Tensor, *shape: int) -> Tensor:
        return x.float().reshape(B * H, *shape).contiguous()

    tensors = (q, k, v, lr, decay, mom, W0, S0, Wc0)
    save = torch.is_grad_enabled() and any(x.requires_grad for x in tensors)
    y, W, S, Wc, sq = LinearRecurrent.apply(
        flat(q, T, Dk), flat(k, T, Dk), flat(v, T, Dv), flat(lr, T), flat(decay, T),
        flat(mom, T), flat(W0, Dv, Dk), flat(S0, Dv, Dk), flat(Wc0, Dv, Dk),
        int(position), int(chunk_size), affine[0], affine[1], block_v, save)
    out = [x.reshape(B, H, *x.shape[1:]).to(q.dtype) for x in (y, W, S, Wc)]
    return (*out, sq.reshape(B, H, T))
