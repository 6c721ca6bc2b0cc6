"""Fused forward and backward Triton kernels of the self-modifying Titans level.

The level (``optimizer="dgd"``, ``read="chunk_start"``, ``write="token"``,
``self_target=True``; docs/concepts.md, NL arXiv 2512.24695 eqs. 87–93). A ``linear`` memory:
per (batch, head) a state ``W (D×D)`` (``Dk = Dv = D``: the values are read through the
memory) and chunk-start parameters ``W_c``; with chunk size ``C``, start position ``p``
and an objective with an affine gradient ``∂ℓ/∂pred = a·pred + b·target`` (``l2`` (1, −1),
``dot`` (0, −1)), per-token θ (lr) and α (decay), token ``t``::

    W_c ← W                               if (p + t) mod C = 0   (a chunk opens)
    u_t = a k_t + b v_t;   δ_t = W_c u_t   (= a·W_c k_t + b·target_t, target_t = W_c v_t)
    e_t = δ_t · min(1, τ/‖δ_t‖)            (grad_clip τ; e_t = δ_t without it)
    W ← W((1 − α_t) I − θ_t k_t k_tᵀ) − θ_t e_t k_tᵀ = (1 − α_t) W − θ_t (W k_t + e_t) k_tᵀ
    y_t = W_c q_t                          (read at the chunk start)

The self target is a constant of the inner gradient, not of the outer one: ``δ_t`` is
differentiated through ``W_c`` and ``v_t`` (so is the DGD term ``W k_t``, at the current
``W``, as in the reference's ``_dgd_step``).

**Blocks.** Row ``i`` of ``W`` and ``W_c`` depends only on row ``i`` of ``W_c`` (``δ_i =
W_c[i, :]·u``), so the grid is ``(B·H, cdiv(D, BV))``: each program holds a ``BV × BK``
block of rows of ``W`` and ``W_c`` in registers (``BK`` = ``D`` rounded up to a power of
two, masked) for the whole sequence and reads ``q_t, k_t, v_t`` whole from global memory.
The clip needs ``‖δ_t‖`` over all rows, so with ``grad_clip`` one program holds all of them
(``BV`` = ``BK``). float32 throughout. Sums over rows (``‖δ_t‖²``, ``dq, dk, dv, dθ,
dα``) are written as one partial per row block and summed in torch.

**Checkpoints.** The forward stores ``(W, W_c)`` before every ``CK``-th token (``CK`` ≈
``√T``, in [16, 128]: ``linear_recurrent.checkpoint_interval``). The backward walks the
segments in reverse: it reloads a checkpoint, recomputes the segment storing each
``W_{t−1}`` in a per-head scratch buffer (``W_c`` of token ``t`` is the checkpoint's, or
``W_{s−1}`` of the token ``s`` in the segment that opened its chunk) and runs the adjoint
recurrence backwards over it. Extra memory per head: ``2⌈T/CK⌉ + CK`` matrices ``D×D``
(float32), plus ``3T·D·⌈D/BV⌉`` floats of partials in the backward.

**Backward** of token ``t`` (``dW``, ``dW_c``: running adjoints of ``W_t`` and of the
chunk's ``W_c``; ``m = W_{t−1} k_t + e_t``, ``s = min(1, τ/‖δ_t‖)``)::

    dW_c += dy_t q_tᵀ;  dq_t = W_cᵀ dy_t
    dα_t = −⟨dW, W_{t−1}⟩;  z = dW k_t;  dθ_t = −m·z;  dm = −θ_t z
    dδ = dm, or s (dm − δ̂ (δ̂·dm)) where ‖δ_t‖ > τ (δ̂ = δ_t/‖δ_t‖)
    dk_t = −θ_t dWᵀ m + W_{t−1}ᵀ dm + a W_cᵀ dδ;  dv_t = b W_cᵀ dδ;  dW_c += dδ u_tᵀ
    dW ← (1 − α_t) dW + dm k_tᵀ
    dW ← dW + dW_c, dW_c ← 0              if token t opened its chunk (W_c = W_{t−1})

**MLP memories** (``mlp``: ``M(x) = W2 σ(W1 x)``, ``residual-mlp``: ``x + W2 σ(W1 x)``;
``W1 (Dh×D)``, ``W2 (D×Dh)``), token ``t`` with ``W_c = (W1c, W2c)``::

    z = W1c k_t, h = σ(z);  δ_t = a·M_{W_c}(k_t) + b·M_{W_c}(v_t);  e2 = clip(δ_t)
    e1 = (W2cᵀ e2) ∘ σ′(z)                                   (x⁽¹⁾ = k_t, x⁽²⁾ = h)
    W1 ← (1 − α_t) W1 − θ_t (W1 k_t + e1) k_tᵀ;  W2 ← (1 − α_t) W2 − θ_t (W2 h + e2) hᵀ
    y_t = M_{W_c}(q_t)

The hidden units couple every row, so the grid is ``(B·H,)``: one program per head keeps
``W``, ``W_c`` (flat ``[W1 | W2]``, ``P = 2·Dh·D`` floats) in global memory and walks its
tokens; per token, pass 1 over tiles of ``BJ`` hidden units (register tiles ``BJ × BD``
of ``W1``, ``BD × BJ`` of ``W2``; ``BD`` = ``D`` rounded up to a power of two,
``BJ·BD ≤ 2048``) forms ``z``, the reads and ``δ``; pass 2 forms ``e1`` and writes both
matrices in place; hidden vectors go through a per-head scratch (6 × Dh floats). The
backward recomputes each segment of ``CK`` tokens from its checkpoint ``(W, W_c)`` into
``CK + 2`` history slots, then per token, last first: the write's adjoint (running ``dW``,
``dW_c`` in global memory, as for the linear memory but per matrix with inputs ``k_t``,
``h``), then back through ``e1, e2, δ``, the reads and ``z`` at ``W_c`` (``σ″`` enters
through ``e1``). Extra memory per head: ``(2⌈T/CK⌉ + CK + 4)·P`` floats.

``truncate=True`` (every chunk but the stream's first writes from its detached start state,
its reads from the attached one): in such a chunk ``dW_c`` takes the reads only (the
write's terms, ``dδ u_tᵀ`` for the linear memory, are dropped) and at its opening token
``dW ← dW_c``. After the first token the adjoints are the gradients of ``W_0`` and of the
state's ``W_c`` (open chunk at the call's start).

The kernels are plain functions decorated by :func:`kernels` / :func:`mlp_kernels` on
first use, one set per ``TRITON_INTERPRET`` value in force at the launch (``triton.jit``
reads the flag when it decorates; helpers resolve in a per-mode namespace); sums are
``tl.reduce(x, axis, _add)`` and zeros ``tl.full``, never ``tl.sum`` / ``tl.zeros``
(jit functions decorated at triton's import; see linear_recurrent.py). Tested through the
interpreter only; every kernel compiles for sm_90 (no spills but for the 128 × 128 block
of a clipped linear scan at D = 128), none has run on a GPU.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.language.standard import _sum_combine as _add

from nlframe.interfaces import ScanRequest
from nlframe.level import MemoryState

from ..triton_backend import dtype_device_reason, hyper_reason, objective_reason
from .common import ACTIVATIONS, act, copy_flat, jit_in_namespace, per_mode
from .linear_recurrent import block_sizes, checkpoint_interval

__all__ = [
    "ACTIVATIONS",
    "MAX_CLIP_BLOCK",
    "MAX_MLP_DIM",
    "DGDSelfTarget",
    "MLPDGDSelfTarget",
    "dgd_self_target",
    "dgd_self_target_mlp",
    "dgd_self_unsupported_reason",
    "scan_dgd_self",
]

MAX_CLIP_BLOCK = 128 * 128
"""Most elements of the one ``BK × BK`` block a clipped scan keeps per program (D ≤ 128)."""


def _forward_kernel(q, k, v, lr, decay, W0, Wc0, y, W_out, Wc_out, sq, ckpt,
                    T, D, pos0, C, a, b, tau, NVB, NS,
                    BK: tl.constexpr, BV: tl.constexpr, CK: tl.constexpr,
                    SAVE: tl.constexpr, CLIP: tl.constexpr):
    """Program ``(bh, vb)``: rows ``vb·BV …`` of head ``bh`` through all ``T`` tokens;
    writes ``y_t`` rows, ``‖δ_t‖²`` of its rows to ``sq[bh, vb, t]``, the final ``W, W_c``
    and (``SAVE``) the checkpoints ``ckpt[bh, seg] = (W, W_c)`` before token ``seg·CK``."""
    bh = tl.program_id(0).to(tl.int64)
    vb = tl.program_id(1)
    rv = vb * BV + tl.arange(0, BV)
    rk = tl.arange(0, BK)
    mv, mk = rv < D, rk < D
    m2 = mv[:, None] & mk[None, :]
    mat = rv[:, None] * D + rk[None, :]
    DD = D * D
    W = tl.load(W0 + bh * DD + mat, mask=m2, other=0.0)
    Wc = tl.load(Wc0 + bh * DD + mat, mask=m2, other=0.0)
    for seg in range(NS):
        t0 = seg * CK
        if SAVE:
            base = ckpt + (bh * NS + seg) * 2 * DD
            tl.store(base + mat, W, mask=m2)
            tl.store(base + DD + mat, Wc, mask=m2)
        for t in range(t0, tl.minimum(t0 + CK, T)):
            row = bh * T + t
            kt = tl.load(k + row * D + rk, mask=mk, other=0.0)
            qt = tl.load(q + row * D + rk, mask=mk, other=0.0)
            vt = tl.load(v + row * D + rk, mask=mk, other=0.0)
            theta = tl.load(lr + row)
            alpha = tl.load(decay + row)
            Wc = tl.where((pos0 + t) % C == 0, W, Wc)
            u = a * kt + b * vt
            delta = tl.reduce(Wc * u[None, :], 1, _add)
            sqd = tl.reduce(delta * delta, 0, _add)
            tl.store(sq + (bh * NVB + vb) * T + t, sqd)
            if CLIP:  # one block holds every row (NVB = 1): sqd is ‖δ_t‖²
                delta = delta * (tau / tl.maximum(tl.sqrt(sqd), tau))
            m = tl.reduce(W * kt[None, :], 1, _add) + delta
            tl.store(y + row * D + rv, tl.reduce(Wc * qt[None, :], 1, _add), mask=mv)
            W = (1.0 - alpha) * W - theta * (m[:, None] * kt[None, :])
    tl.store(W_out + bh * DD + mat, W, mask=m2)
    tl.store(Wc_out + bh * DD + mat, Wc, mask=m2)


def _backward_kernel(q, k, v, lr, decay, dy, dW_T, dWc_T, ckpt, scratch,
                     dq_part, dk_part, dv_part, dgate_part, dW0, dWc0,
                     T, D, pos0, C, a, b, tau, step0, NVB, NS,
                     BK: tl.constexpr, BV: tl.constexpr, CK: tl.constexpr,
                     CLIP: tl.constexpr, TRUNC: tl.constexpr):
    """Program ``(bh, vb)``: the adjoint recurrence (module docstring) of its rows, segment
    by segment from the last; ``dq, dk, dv`` and ``(dθ, dα)`` as this block's partials
    ``d*_part[bh, vb, t]``, ``dgate_part[bh, vb, :, t]``; the gradients of ``W_0, W_c``."""
    bh = tl.program_id(0).to(tl.int64)
    vb = tl.program_id(1)
    rv = vb * BV + tl.arange(0, BV)
    rk = tl.arange(0, BK)
    mv, mk = rv < D, rk < D
    m2 = mv[:, None] & mk[None, :]
    mat = rv[:, None] * D + rk[None, :]
    DD = D * D
    part = bh * NVB + vb
    dW = tl.load(dW_T + bh * DD + mat, mask=m2, other=0.0)
    dWc = tl.load(dWc_T + bh * DD + mat, mask=m2, other=0.0)
    keep = scratch + bh * CK * DD  # [j]: W_{t0+j−1}
    for i in range(NS):
        seg = NS - 1 - i
        t0 = seg * CK
        n = tl.minimum(t0 + CK, T) - t0
        base = ckpt + (bh * NS + seg) * 2 * DD
        W = tl.load(base + mat, mask=m2, other=0.0)
        Wck = tl.load(base + DD + mat, mask=m2, other=0.0)
        Wc = Wck
        for j in range(n):  # recompute the segment, keeping each token's input state
            t = t0 + j
            row = bh * T + t
            tl.store(keep + j * DD + mat, W, mask=m2)
            kt = tl.load(k + row * D + rk, mask=mk, other=0.0)
            vt = tl.load(v + row * D + rk, mask=mk, other=0.0)
            theta = tl.load(lr + row)
            alpha = tl.load(decay + row)
            Wc = tl.where((pos0 + t) % C == 0, W, Wc)
            delta = tl.reduce(Wc * (a * kt + b * vt)[None, :], 1, _add)
            if CLIP:
                nrm = tl.sqrt(tl.reduce(delta * delta, 0, _add))
                delta = delta * (tau / tl.maximum(nrm, tau))
            m = tl.reduce(W * kt[None, :], 1, _add) + delta
            W = (1.0 - alpha) * W - theta * (m[:, None] * kt[None, :])
        tl.debug_barrier()
        for r in range(n):  # the adjoint recurrence, last token first
            j = n - 1 - r
            t = t0 + j
            row = bh * T + t
            Wp = tl.load(keep + j * DD + mat, mask=m2, other=0.0)
            pos = (pos0 + t) % C
            o = j - pos  # index in this segment of the token that opened t's chunk
            Wo = tl.load(keep + tl.maximum(o, 0) * DD + mat, mask=m2, other=0.0)
            Wc = tl.where(o >= 0, Wo, Wck)
            kt = tl.load(k + row * D + rk, mask=mk, other=0.0)
            qt = tl.load(q + row * D + rk, mask=mk, other=0.0)
            vt = tl.load(v + row * D + rk, mask=mk, other=0.0)
            dyt = tl.load(dy + row * D + rv, mask=mv, other=0.0)
            theta = tl.load(lr + row)
            alpha = tl.load(decay + row)
            u = a * kt + b * vt
            delta = tl.reduce(Wc * u[None, :], 1, _add)
            e = delta
            if CLIP:
                sqd = tl.reduce(delta * delta, 0, _add)
                nrm = tl.sqrt(sqd)
                s = tau / tl.maximum(nrm, tau)
                e = delta * s
            m = tl.reduce(Wp * kt[None, :], 1, _add) + e
            # the read y_t = W_c q_t
            dWc += dyt[:, None] * qt[None, :]
            tl.store(dq_part + (part * T + t) * D + rk,
                     tl.reduce(Wc * dyt[:, None], 0, _add), mask=mk)
            # the write W_t = (1 − α) W_{t−1} − θ m kᵀ
            tl.store(dgate_part + (part * 2 + 1) * T + t, -tl.reduce(dW * Wp, None, _add))
            z = tl.reduce(dW * kt[None, :], 1, _add)
            tl.store(dgate_part + (part * 2 + 0) * T + t, -tl.reduce(m * z, 0, _add))
            dm = -theta * z
            dkt = -theta * tl.reduce(dW * m[:, None], 0, _add) + tl.reduce(Wp * dm[:, None], 0, _add)
            ddelta = dm
            if CLIP:  # e = τ δ/‖δ‖ where ‖δ‖ > τ: project out δ̂
                proj = tl.reduce(delta * dm, 0, _add) / tl.maximum(sqd, tau * tau)
                ddelta = tl.where(nrm > tau, s * (dm - delta * proj), dm)
            du = tl.reduce(Wc * ddelta[:, None], 0, _add)
            tl.store(dk_part + (part * T + t) * D + rk, dkt + a * du, mask=mk)
            tl.store(dv_part + (part * T + t) * D + rk, b * du, mask=mk)
            dW = (1.0 - alpha) * dW + dm[:, None] * kt[None, :]
            opened = pos == 0
            if TRUNC:  # a chunk starting after the stream's first token writes from a cut
                cut = (step0 + t - pos) > 0
                dWc = tl.where(cut, dWc, dWc + ddelta[:, None] * u[None, :])
                dW = tl.where(opened & cut, 0.0, dW)
            else:
                dWc += ddelta[:, None] * u[None, :]
            dW = tl.where(opened, dW + dWc, dW)
            dWc = tl.where(opened, 0.0, dWc)
        tl.debug_barrier()  # the next segment overwrites the scratch rows
    tl.store(dW0 + bh * DD + mat, dW, mask=m2)
    tl.store(dWc0 + bh * DD + mat, dWc, mask=m2)


# -- two-layer MLP memories ----------------------------------------------------------------
MAX_MLP_DIM = 256
"""Largest head dim ``D`` of an mlp memory (register tiles ``BJ × BD`` and ``BD × BJ``)."""


def _fold(dW, dWc, n, keep, BLK: tl.constexpr):
    """``dW = keep·dW + dWc;  dWc = 0`` (a chunk's opening token: ``W_c`` is ``W_{t−1}``)."""
    for off in range(0, n, BLK):
        r = off + tl.arange(0, BLK)
        m = r < n
        c = tl.load(dWc + r, mask=m, other=0.0)
        tl.store(dW + r, keep * tl.load(dW + r, mask=m, other=0.0) + c, mask=m)
        tl.store(dWc + r, c * 0.0, mask=m)


def _mlp_token_forward(Wp, Wn, Wc, vec, VS, kt, qt, vt, theta, alpha, D, Dh, a, b, tau,
                       ACT: tl.constexpr, RES: tl.constexpr, CLIP: tl.constexpr,
                       BD: tl.constexpr, BJ: tl.constexpr):
    """One token: reads at ``Wc``, the DGD write of ``Wp`` into ``Wn`` (flat ``[W1 | W2]``,
    may be ``Wp``); ``z_k`` kept in ``vec``. Returns ``y_t`` and ``‖δ_t‖²``."""
    rd = tl.arange(0, BD)
    md = rd < D
    pred = tl.full((BD,), 0.0, tl.float32)
    targ = tl.full((BD,), 0.0, tl.float32)
    yv = tl.full((BD,), 0.0, tl.float32)
    r2 = tl.full((BD,), 0.0, tl.float32)
    W2o = D * Dh
    for j0 in range(0, Dh, BJ):  # pass 1: hidden units at W_c, the reads, W2 h_k
        rj = j0 + tl.arange(0, BJ)
        mj = rj < Dh
        o1 = rj[:, None] * D + rd[None, :]
        m1 = mj[:, None] & md[None, :]
        o2 = W2o + rd[:, None] * Dh + rj[None, :]
        m2 = md[:, None] & mj[None, :]
        w1c = tl.load(Wc + o1, mask=m1, other=0.0)
        zk = tl.reduce(w1c * kt[None, :], 1, _add)
        tl.store(vec + rj, zk, mask=mj)
        hk, _, _ = act(zk, ACT, 0)
        hv, _, _ = act(tl.reduce(w1c * vt[None, :], 1, _add), ACT, 0)
        hq, _, _ = act(tl.reduce(w1c * qt[None, :], 1, _add), ACT, 0)
        w2c = tl.load(Wc + o2, mask=m2, other=0.0)
        pred += tl.reduce(w2c * hk[None, :], 1, _add)
        targ += tl.reduce(w2c * hv[None, :], 1, _add)
        yv += tl.reduce(w2c * hq[None, :], 1, _add)
        r2 += tl.reduce(tl.load(Wp + o2, mask=m2, other=0.0) * hk[None, :], 1, _add)
    if RES:
        pred += kt
        targ += vt
        yv += qt
    delta = a * pred + b * targ
    sqd = tl.reduce(delta * delta, 0, _add)
    if CLIP:
        delta = delta * (tau / tl.maximum(tl.sqrt(sqd), tau))
    m2v = r2 + delta
    tl.debug_barrier()
    for j0 in range(0, Dh, BJ):  # pass 2: e1 = (W2cᵀ e2) ∘ σ′(z_k), the writes
        rj = j0 + tl.arange(0, BJ)
        mj = rj < Dh
        o1 = rj[:, None] * D + rd[None, :]
        m1 = mj[:, None] & md[None, :]
        o2 = W2o + rd[:, None] * Dh + rj[None, :]
        m2 = md[:, None] & mj[None, :]
        hk, s1, _ = act(tl.load(vec + rj, mask=mj, other=0.0), ACT, 1)
        e1 = tl.reduce(tl.load(Wc + o2, mask=m2, other=0.0) * delta[:, None], 0, _add) * s1
        w1 = tl.load(Wp + o1, mask=m1, other=0.0)
        m1v = tl.reduce(w1 * kt[None, :], 1, _add) + e1
        tl.store(Wn + o1, (1.0 - alpha) * w1 - theta * (m1v[:, None] * kt[None, :]), mask=m1)
        w2 = tl.load(Wp + o2, mask=m2, other=0.0)
        tl.store(Wn + o2, (1.0 - alpha) * w2 - theta * (m2v[:, None] * hk[None, :]), mask=m2)
    tl.debug_barrier()
    return yv, sqd


def _mlp_token_backward(Wp, Wc, dW, dWc, vec, VS, kt, qt, vt, dyt, theta, alpha, wr,
                        D, Dh, a, b, tau, ACT: tl.constexpr, RES: tl.constexpr,
                        CLIP: tl.constexpr, BD: tl.constexpr, BJ: tl.constexpr):
    """The adjoint of one token (module docstring): ``dW`` (adjoint of ``W_t`` → of
    ``W_{t−1}``) and ``dWc`` updated in place, ``wr = 0`` drops the write's path to ``W_c``
    (truncate). ``vec`` slots: 0 z_k, 1 z_v, 2 z_q, 3 dg, 4 dz_k (σ″ part), 5 dh_k (DGD
    part). Returns ``dk_t, dv_t, dq_t, dθ_t, dα_t``."""
    rd = tl.arange(0, BD)
    md = rd < D
    W2o = D * Dh
    pred = tl.full((BD,), 0.0, tl.float32)
    targ = tl.full((BD,), 0.0, tl.float32)
    r2 = tl.full((BD,), 0.0, tl.float32)
    for j0 in range(0, Dh, BJ):  # R: the token's forward at W_c and W_{t−1}
        rj = j0 + tl.arange(0, BJ)
        mj = rj < Dh
        o1 = rj[:, None] * D + rd[None, :]
        m1 = mj[:, None] & md[None, :]
        o2 = W2o + rd[:, None] * Dh + rj[None, :]
        m2 = md[:, None] & mj[None, :]
        w1c = tl.load(Wc + o1, mask=m1, other=0.0)
        zk = tl.reduce(w1c * kt[None, :], 1, _add)
        zv = tl.reduce(w1c * vt[None, :], 1, _add)
        tl.store(vec + rj, zk, mask=mj)
        tl.store(vec + VS + rj, zv, mask=mj)
        tl.store(vec + 2 * VS + rj, tl.reduce(w1c * qt[None, :], 1, _add), mask=mj)
        hk, _, _ = act(zk, ACT, 0)
        hv, _, _ = act(zv, ACT, 0)
        w2c = tl.load(Wc + o2, mask=m2, other=0.0)
        pred += tl.reduce(w2c * hk[None, :], 1, _add)
        targ += tl.reduce(w2c * hv[None, :], 1, _add)
        r2 += tl.reduce(tl.load(Wp + o2, mask=m2, other=0.0) * hk[None, :], 1, _add)
    if RES:
        pred += kt
        targ += vt
    delta = a * pred + b * targ
    e2 = delta
    if CLIP:
        sqd = tl.reduce(delta * delta, 0, _add)
        nrm = tl.sqrt(sqd)
        sc = tau / tl.maximum(nrm, tau)
        e2 = delta * sc
    m2v = r2 + e2
    tl.debug_barrier()
    dal = tl.full((BD,), 0.0, tl.float32)  # per-column partials of dα, dθ (summed below)
    dth = tl.full((BJ,), 0.0, tl.float32)
    dkt = tl.full((BD,), 0.0, tl.float32)
    z2 = tl.full((BD,), 0.0, tl.float32)
    for j0 in range(0, Dh, BJ):  # X1: W1's write, dW2 h_k
        rj = j0 + tl.arange(0, BJ)
        mj = rj < Dh
        o1 = rj[:, None] * D + rd[None, :]
        m1 = mj[:, None] & md[None, :]
        o2 = W2o + rd[:, None] * Dh + rj[None, :]
        m2 = md[:, None] & mj[None, :]
        hk, s1, s2 = act(tl.load(vec + rj, mask=mj, other=0.0), ACT, 2)
        g = tl.reduce(tl.load(Wc + o2, mask=m2, other=0.0) * e2[:, None], 0, _add)
        w1p = tl.load(Wp + o1, mask=m1, other=0.0)
        m1v = tl.reduce(w1p * kt[None, :], 1, _add) + g * s1
        p1 = tl.load(dW + o1, mask=m1, other=0.0)
        dal -= tl.reduce(p1 * w1p, 0, _add)
        z1 = tl.reduce(p1 * kt[None, :], 1, _add)
        dth -= m1v * z1
        dm1 = -theta * z1
        dkt += (tl.reduce(w1p * dm1[:, None], 0, _add)
                - theta * tl.reduce(p1 * m1v[:, None], 0, _add))
        tl.store(dW + o1, (1.0 - alpha) * p1 + dm1[:, None] * kt[None, :], mask=m1)
        p2 = tl.load(dW + o2, mask=m2, other=0.0)
        dal -= tl.reduce(p2 * tl.load(Wp + o2, mask=m2, other=0.0), 1, _add)
        z2 += tl.reduce(p2 * hk[None, :], 1, _add)
        tl.store(vec + 3 * VS + rj, dm1 * s1, mask=mj)
        tl.store(vec + 4 * VS + rj, dm1 * g * s2, mask=mj)
    dm2 = -theta * z2
    dth = tl.reduce(dth, 0, _add) - tl.reduce(m2v * z2, 0, _add)
    dal = tl.reduce(dal, 0, _add)
    tl.debug_barrier()
    de2 = dm2
    for j0 in range(0, Dh, BJ):  # X2: W2's write, W2c dg
        rj = j0 + tl.arange(0, BJ)
        mj = rj < Dh
        o2 = W2o + rd[:, None] * Dh + rj[None, :]
        m2 = md[:, None] & mj[None, :]
        hk, _, _ = act(tl.load(vec + rj, mask=mj, other=0.0), ACT, 0)
        p2 = tl.load(dW + o2, mask=m2, other=0.0)
        w2p = tl.load(Wp + o2, mask=m2, other=0.0)
        dhb = (tl.reduce(w2p * dm2[:, None], 0, _add)
               - theta * tl.reduce(p2 * m2v[:, None], 0, _add))
        tl.store(vec + 5 * VS + rj, dhb, mask=mj)
        tl.store(dW + o2, (1.0 - alpha) * p2 + dm2[:, None] * hk[None, :], mask=m2)
        dg = tl.load(vec + 3 * VS + rj, mask=mj, other=0.0)
        de2 += tl.reduce(tl.load(Wc + o2, mask=m2, other=0.0) * dg[None, :], 1, _add)
    ddelta = de2
    if CLIP:  # e2 = τ δ/‖δ‖ where ‖δ‖ > τ: project out δ̂
        proj = tl.reduce(delta * de2, 0, _add) / tl.maximum(sqd, tau * tau)
        ddelta = tl.where(nrm > tau, sc * (de2 - delta * proj), de2)
    dpred = a * ddelta
    dtarg = b * ddelta
    dvt = tl.full((BD,), 0.0, tl.float32)
    dqt = tl.full((BD,), 0.0, tl.float32)
    if RES:
        dkt += dpred
        dvt += dtarg
        dqt += dyt
    tl.debug_barrier()
    for j0 in range(0, Dh, BJ):  # Y: back through the reads and errors at W_c
        rj = j0 + tl.arange(0, BJ)
        mj = rj < Dh
        o1 = rj[:, None] * D + rd[None, :]
        m1 = mj[:, None] & md[None, :]
        o2 = W2o + rd[:, None] * Dh + rj[None, :]
        m2 = md[:, None] & mj[None, :]
        hk, sk, _ = act(tl.load(vec + rj, mask=mj, other=0.0), ACT, 1)
        hv, sv, _ = act(tl.load(vec + VS + rj, mask=mj, other=0.0), ACT, 1)
        hq, sq_, _ = act(tl.load(vec + 2 * VS + rj, mask=mj, other=0.0), ACT, 1)
        dg = tl.load(vec + 3 * VS + rj, mask=mj, other=0.0)
        w2c = tl.load(Wc + o2, mask=m2, other=0.0)
        dhk = tl.load(vec + 5 * VS + rj, mask=mj, other=0.0) + tl.reduce(w2c * dpred[:, None], 0, _add)
        dzk = tl.load(vec + 4 * VS + rj, mask=mj, other=0.0) + dhk * sk
        dzv = tl.reduce(w2c * dtarg[:, None], 0, _add) * sv
        dzq = tl.reduce(w2c * dyt[:, None], 0, _add) * sq_
        c2 = tl.load(dWc + o2, mask=m2, other=0.0)
        c2 += wr * (e2[:, None] * dg[None, :] + dpred[:, None] * hk[None, :]
                    + dtarg[:, None] * hv[None, :]) + dyt[:, None] * hq[None, :]
        tl.store(dWc + o2, c2, mask=m2)
        w1c = tl.load(Wc + o1, mask=m1, other=0.0)
        dkt += tl.reduce(w1c * dzk[:, None], 0, _add)
        dvt += tl.reduce(w1c * dzv[:, None], 0, _add)
        dqt += tl.reduce(w1c * dzq[:, None], 0, _add)
        c1 = tl.load(dWc + o1, mask=m1, other=0.0)
        c1 += wr * (dzk[:, None] * kt[None, :] + dzv[:, None] * vt[None, :]) \
            + dzq[:, None] * qt[None, :]
        tl.store(dWc + o1, c1, mask=m1)
    tl.debug_barrier()
    return dkt, dvt, dqt, dth, dal


def _mlp_forward_kernel(q, k, v, lr, decay, W, Wc, y, sq, ckpt, vec,
                        T, D, Dh, pos0, C, a, b, tau, NS, VS,
                        ACT: tl.constexpr, RES: tl.constexpr, CLIP: tl.constexpr,
                        SAVE: tl.constexpr, BD: tl.constexpr, BJ: tl.constexpr,
                        CK: tl.constexpr, BLK: tl.constexpr):
    """Program ``bh``: its head through all ``T`` tokens, ``W`` and ``W_c`` (flat, already
    holding the initial state) updated in place; ``y_t``, ``‖δ_t‖²`` and (``SAVE``) the
    checkpoints ``ckpt[bh, seg] = (W, W_c)`` before token ``seg·CK``."""
    bh = tl.program_id(0).to(tl.int64)
    P = 2 * D * Dh
    Wb = W + bh * P
    Wcb = Wc + bh * P
    vb = vec + bh * 6 * VS
    rd = tl.arange(0, BD)
    md = rd < D
    for seg in range(NS):
        t0 = seg * CK
        if SAVE:
            copy_flat(ckpt + (bh * NS + seg) * 2 * P, Wb, P, BLK)
            copy_flat(ckpt + (bh * NS + seg) * 2 * P + P, Wcb, P, BLK)
        for t in range(t0, tl.minimum(t0 + CK, T)):
            row = bh * T + t
            if (pos0 + t) % C == 0:
                tl.debug_barrier()
                copy_flat(Wcb, Wb, P, BLK)
                tl.debug_barrier()
            kt = tl.load(k + row * D + rd, mask=md, other=0.0)
            qt = tl.load(q + row * D + rd, mask=md, other=0.0)
            vt = tl.load(v + row * D + rd, mask=md, other=0.0)
            yv, sqd = _mlp_token_forward(Wb, Wb, Wcb, vb, VS, kt, qt, vt, tl.load(lr + row),
                                         tl.load(decay + row), D, Dh, a, b, tau,
                                         ACT, RES, CLIP, BD, BJ)
            tl.store(y + row * D + rd, yv, mask=md)
            tl.store(sq + row, sqd)


def _mlp_backward_kernel(q, k, v, lr, decay, dy, ckpt, hist, vec, dW, dWc,
                         dq, dk, dv, dlr, ddecay,
                         T, D, Dh, pos0, C, a, b, tau, step0, NS, VS,
                         ACT: tl.constexpr, RES: tl.constexpr, CLIP: tl.constexpr,
                         TRUNC: tl.constexpr, BD: tl.constexpr, BJ: tl.constexpr,
                         CK: tl.constexpr, BLK: tl.constexpr):
    """Program ``bh``: segments from the last; each is recomputed from its checkpoint into
    ``hist`` (slot ``j``: ``W`` before the segment's token ``j``; slot ``CK + 1``: the
    checkpoint's ``W_c``), then its tokens' adjoints run backwards. ``dW``, ``dWc`` hold
    the adjoints of the final state on entry and those of ``W_0``, ``W_c`` on exit."""
    bh = tl.program_id(0).to(tl.int64)
    P = 2 * D * Dh
    dWb = dW + bh * P
    dWcb = dWc + bh * P
    hb = hist + bh * (CK + 2) * P
    vb = vec + bh * 6 * VS
    rd = tl.arange(0, BD)
    md = rd < D
    for i in range(NS):
        seg = NS - 1 - i
        t0 = seg * CK
        n = tl.minimum(t0 + CK, T) - t0
        tl.debug_barrier()
        copy_flat(hb, ckpt + (bh * NS + seg) * 2 * P, P, BLK)
        copy_flat(hb + (CK + 1) * P, ckpt + (bh * NS + seg) * 2 * P + P, P, BLK)
        tl.debug_barrier()
        for j in range(n):  # recompute the segment
            t = t0 + j
            row = bh * T + t
            o = j - (pos0 + t) % C
            slot = tl.where(o >= 0, o, CK + 1)
            kt = tl.load(k + row * D + rd, mask=md, other=0.0)
            qt = tl.load(q + row * D + rd, mask=md, other=0.0)
            vt = tl.load(v + row * D + rd, mask=md, other=0.0)
            _mlp_token_forward(hb + j * P, hb + (j + 1) * P, hb + slot * P, vb, VS, kt, qt, vt,
                               tl.load(lr + row), tl.load(decay + row), D, Dh, a, b, tau,
                               ACT, RES, CLIP, BD, BJ)
        for r in range(n):  # the adjoints, last token first
            j = n - 1 - r
            t = t0 + j
            row = bh * T + t
            pos = (pos0 + t) % C
            o = j - pos
            slot = tl.where(o >= 0, o, CK + 1)
            wr = 1.0
            if TRUNC:
                wr = tl.where((step0 + t - pos) > 0, 0.0, 1.0)
            kt = tl.load(k + row * D + rd, mask=md, other=0.0)
            qt = tl.load(q + row * D + rd, mask=md, other=0.0)
            vt = tl.load(v + row * D + rd, mask=md, other=0.0)
            dyt = tl.load(dy + row * D + rd, mask=md, other=0.0)
            dkt, dvt, dqt, dth, dal = _mlp_token_backward(
                hb + j * P, hb + slot * P, dWb, dWcb, vb, VS, kt, qt, vt, dyt,
                tl.load(lr + row), tl.load(decay + row), wr, D, Dh, a, b, tau,
                ACT, RES, CLIP, BD, BJ)
            tl.store(dk + row * D + rd, dkt, mask=md)
            tl.store(dv + row * D + rd, dvt, mask=md)
            tl.store(dq + row * D + rd, dqt, mask=md)
            tl.store(dlr + row, dth)
            tl.store(ddecay + row, dal)
            if pos == 0:
                _fold(dWb, dWcb, P, wr, BLK)
                tl.debug_barrier()


_MLP_HELPERS = ("act", "copy_flat", "_fold", "_mlp_token_forward", "_mlp_token_backward")
_MLP_JIT: dict[bool, tuple] = {}


def mlp_kernels():
    """``(forward, backward)`` of the mlp memories decorated by ``triton.jit`` for the current
    interpreter flag; kernels and helpers of one mode resolve each other in their own
    namespace (a copy of this module's globals)."""
    return per_mode(_MLP_JIT, lambda: jit_in_namespace(
        globals(), _MLP_HELPERS, (_mlp_forward_kernel, _mlp_backward_kernel)))


_JIT: dict[bool, tuple] = {}


def kernels():
    """``(forward, backward)`` decorated by ``triton.jit`` for the current interpreter flag."""
    return per_mode(_JIT, lambda: (triton.jit(_forward_kernel), triton.jit(_backward_kernel)))


def row_blocks(D: int, clip: bool, block_v: int | None = None) -> tuple[int, int]:
    """``(BK, BV)``: ``linear_recurrent.block_sizes``, or every row in one block (``BV =
    BK``) when the scan clips (the clip needs the whole ``‖δ_t‖``)."""
    BK, BV = block_sizes(D, D, block_v)
    return (BK, BK) if clip else (BK, BV)


def num_warps(BK: int, BV: int) -> int:
    """4 warps up to 1024-element blocks, 8 up to 4096, else 16 (sm_90, ptxas: no spills
    up to 64 × 64 linear blocks and 2048-element mlp tiles; the 128 × 128 block of a
    clipped linear scan spills)."""
    n = BK * BV
    return 4 if n <= 1024 else 8 if n <= 4096 else 16


def _on(x: Tensor):
    """Launch on ``x``'s CUDA device (Triton launches on the current one)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


class DGDSelfTarget(torch.autograd.Function):
    """The level on ``(BH, T, D)`` float32 contiguous tensors (module docstring).

    ``forward(q, k, v, θ, α, W0, Wc0, p, C, a, b, τ, truncate, step, BV, save)`` →
    ``y (BH, T, D)``, final ``W, W_c (BH, D, D)`` and ``‖δ_t‖² (BH, T)`` (unclipped, not
    differentiable); ``τ = None``: no clip; ``save``: keep the checkpoints for a backward."""

    @staticmethod
    def forward(ctx, q, k, v, lr, decay, W0, Wc0, position, chunk, a, b, tau, truncate, step,
                block_v, save):
        BH, T, D = q.shape
        clip = tau is not None
        BK, BV = row_blocks(D, clip, block_v)
        CK = checkpoint_interval(T)
        NVB, NS = triton.cdiv(D, BV), triton.cdiv(T, CK)
        y = q.new_empty(BH, T, D)
        W, Wc = torch.empty_like(W0), torch.empty_like(W0)
        sq = q.new_empty(BH, NVB, T)
        ckpt = q.new_empty(BH, NS, 2, D, D) if save else q.new_empty(1)
        fwd, _ = kernels()
        with _on(q):
            fwd[(BH, NVB)](q, k, v, lr, decay, W0, Wc0, y, W, Wc, sq, ckpt,
                           T, D, position, chunk, float(a), float(b), float(tau or 0.0), NVB, NS,
                           BK=BK, BV=BV, CK=CK, SAVE=save, CLIP=clip,
                           num_warps=num_warps(BK, BV))
        if save:
            ctx.save_for_backward(q, k, v, lr, decay, ckpt)
        ctx.meta = (position, chunk, float(a), float(b), tau, bool(truncate), int(step),
                    BK, BV, CK, NVB, NS)
        sq = sq.sum(1)
        ctx.mark_non_differentiable(sq)
        return y, W, Wc, sq

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dW, dWc, _dsq):
        q, k, v, lr, decay, ckpt = ctx.saved_tensors
        position, chunk, a, b, tau, truncate, step, BK, BV, CK, NVB, NS = ctx.meta
        BH, T, D = q.shape
        dy, dW, dWc = (x.float().contiguous() for x in (dy, dW, dWc))
        scratch = q.new_empty(BH, CK, D, D)
        dq_part, dk_part, dv_part = (q.new_empty(BH, NVB, T, D) for _ in range(3))
        dgate_part = q.new_empty(BH, NVB, 2, T)
        dW0, dWc0 = torch.empty_like(dW), torch.empty_like(dW)
        _, bwd = kernels()
        with _on(q):
            bwd[(BH, NVB)](q, k, v, lr, decay, dy, dW, dWc, ckpt, scratch,
                           dq_part, dk_part, dv_part, dgate_part, dW0, dWc0,
                           T, D, position, chunk, a, b, float(tau or 0.0), step, NVB, NS,
                           BK=BK, BV=BV, CK=CK, CLIP=tau is not None, TRUNC=truncate,
                           num_warps=num_warps(BK, BV))
        dlr, ddecay = dgate_part.sum(1).unbind(1)
        return (dq_part.sum(1), dk_part.sum(1), dv_part.sum(1), dlr, ddecay, dW0,
                dWc0 if position else None,
                None, None, None, None, None, None, None, None, None)


def dgd_self_target(q: Tensor, k: Tensor, v: Tensor, lr: Tensor, decay: Tensor, W0: Tensor,
                    Wc0: Tensor, *, position: int, chunk_size: int, affine: tuple[float, float],
                    grad_clip: float | None = None, truncate: bool = False, step: int = 0,
                    block_v: int | None = None):
    """The level on ``(B, H, ·)`` tensors: q, k, v ``(B, H, T, D)``, gates θ, α ``(B, H, T)``,
    ``W0``, ``Wc0`` ``(B, H, D, D)`` (``Wc0`` is used only when ``position > 0``); computed
    in float32, differentiable in every tensor. ``step``: the stream position of the first
    token (for ``truncate``). Returns ``y``, the final ``W`` and ``W_c`` (in q's dtype) and
    the unclipped ``‖δ_t‖² (B, H, T)`` (float32, not differentiable)."""
    B, H, T, D = q.shape

    def flat(x: Tensor, *shape: int) -> Tensor:
        return x.float().reshape(B * H, *shape).contiguous()

    tensors = (q, k, v, lr, decay, W0, Wc0)
    save = torch.is_grad_enabled() and any(x.requires_grad for x in tensors)
    y, W, Wc, sq = DGDSelfTarget.apply(
        flat(q, T, D), flat(k, T, D), flat(v, T, D), flat(lr, T), flat(decay, T),
        flat(W0, D, D), flat(Wc0 if position else W0, D, D), int(position), int(chunk_size),
        affine[0], affine[1], None if grad_clip is None else float(grad_clip), bool(truncate),
        int(step), block_v, save)
    out = [x.reshape(B, H, *x.shape[1:]).to(q.dtype) for x in (y, W, Wc)]
    return (*out, sq.reshape(B, H, T))


def mlp_blocks(D: int, Dh: int, block_h: int | None = None) -> tuple[int, int]:
    """``(BD, BJ)``: ``D`` rounded up to a power of two; hidden units per tile with
    ``BJ·BD ≤ 2048`` (``block_h``, a power of two, overrides it)."""
    BD = triton.next_power_of_2(D)
    if block_h is not None:
        if block_h < 1 or block_h & (block_h - 1):
            raise ValueError(f"block_h must be a power of two, got {block_h}")
        return BD, block_h
    return BD, max(1, min(triton.next_power_of_2(Dh), 2048 // BD))


class MLPDGDSelfTarget(torch.autograd.Function):
    """The level of a two-layer MLP memory on ``(BH, T, D)`` float32 contiguous tensors and
    flat ``[W1 | W2]`` states ``(BH, 2·Dh·D)`` (module docstring).

    ``forward(q, k, v, θ, α, W0, Wc0, p, C, a, b, τ, truncate, step, Dh, act, residual,
    BJ, save)`` → ``y``, final ``W``, ``W_c`` (flat) and ``‖δ_t‖² (BH, T)``."""

    @staticmethod
    def forward(ctx, q, k, v, lr, decay, W0, Wc0, position, chunk, a, b, tau, truncate, step,
                hidden, act, residual, block_h, save):
        BH, T, D = q.shape
        BD, BJ = mlp_blocks(D, hidden, block_h)
        CK = checkpoint_interval(T)
        NS, VS = triton.cdiv(T, CK), triton.cdiv(hidden, BJ) * BJ
        W, Wc = W0.clone(), Wc0.clone()
        y, sq = q.new_empty(BH, T, D), q.new_empty(BH, T)
        ckpt = q.new_empty(BH, NS, 2, W0.shape[1]) if save else q.new_empty(1)
        vec = q.new_empty(BH, 6, VS)
        fwd, _ = mlp_kernels()
        with _on(q):
            fwd[(BH,)](q, k, v, lr, decay, W, Wc, y, sq, ckpt, vec,
                       T, D, hidden, position, chunk, float(a), float(b), float(tau or 0.0),
                       NS, VS, ACT=act, RES=bool(residual), CLIP=tau is not None, SAVE=save,
                       BD=BD, BJ=BJ, CK=CK, BLK=1024, num_warps=num_warps(BD, BJ))
        if save:
            ctx.save_for_backward(q, k, v, lr, decay, ckpt)
        ctx.meta = (position, chunk, float(a), float(b), tau, bool(truncate), int(step), hidden,
                    act, bool(residual), BD, BJ, CK, NS, VS)
        ctx.mark_non_differentiable(sq)
        return y, W, Wc, sq

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dW, dWc, _dsq):
        q, k, v, lr, decay, ckpt = ctx.saved_tensors
        (position, chunk, a, b, tau, truncate, step, hidden, act, residual, BD, BJ, CK, NS,
         VS) = ctx.meta
        BH, T, D = q.shape
        dy = dy.float().contiguous()
        dW = dW.float().contiguous().clone()  # in: the final state's adjoints; out: W0's
        dWc = dWc.float().contiguous().clone()
        hist = q.new_empty(BH, CK + 2, dW.shape[1])
        vec = q.new_empty(BH, 6, VS)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dlr, ddecay = torch.empty_like(lr), torch.empty_like(decay)
        _, bwd = mlp_kernels()
        with _on(q):
            bwd[(BH,)](q, k, v, lr, decay, dy, ckpt, hist, vec, dW, dWc, dq, dk, dv, dlr, ddecay,
                       T, D, hidden, position, chunk, a, b, float(tau or 0.0), step, NS, VS,
                       ACT=act, RES=residual, CLIP=tau is not None, TRUNC=truncate,
                       BD=BD, BJ=BJ, CK=CK, BLK=1024, num_warps=num_warps(BD, BJ))
        return (dq, dk, dv, dlr, ddecay, dW, dWc if position else None,
                None, None, None, None, None, None, None, None, None, None, None, None)


def dgd_self_target_mlp(q: Tensor, k: Tensor, v: Tensor, lr: Tensor, decay: Tensor,
                        params: dict[str, Tensor], chunk_params: dict[str, Tensor], *,
                        position: int, chunk_size: int, affine: tuple[float, float],
                        activation: str, residual: bool, grad_clip: float | None = None,
                        truncate: bool = False, step: int = 0, block_h: int | None = None):
    """The level of ``M(x) = W2 σ(W1 x)`` (``+ x`` when ``residual``) on ``(B, H, ·)``
    tensors: params ``{"W1": (B, H, Dh, D), "W2": (B, H, D, Dh)}`` (``chunk_params`` used
    only when ``position > 0``). Returns ``y``, the final params and chunk params (dicts,
    in q's dtype) and the unclipped ``‖δ_t‖² (B, H, T)``."""
    B, H, T, D = q.shape
    Dh = params["W1"].shape[-2]

    def flat(x: Tensor, *shape: int) -> Tensor:
        return x.float().reshape(B * H, *shape).contiguous()

    def flat_params(p: dict[str, Tensor]) -> Tensor:
        return torch.cat([flat(p["W1"], Dh * D), flat(p["W2"], D * Dh)], 1)

    def unflat(x: Tensor) -> dict[str, Tensor]:
        x = x.to(q.dtype)
        return {"W1": x[:, :Dh * D].reshape(B, H, Dh, D), "W2": x[:, Dh * D:].reshape(B, H, D, Dh)}

    tensors = (q, k, v, lr, decay, *params.values(), *(chunk_params.values() if position else ()))
    save = torch.is_grad_enabled() and any(x.requires_grad for x in tensors)
    W0 = flat_params(params)
    y, W, Wc, sq = MLPDGDSelfTarget.apply(
        flat(q, T, D), flat(k, T, D), flat(v, T, D), flat(lr, T), flat(decay, T), W0,
        flat_params(chunk_params) if position else W0, int(position), int(chunk_size),
        affine[0], affine[1], None if grad_clip is None else float(grad_clip), bool(truncate),
        int(step), int(Dh), ACTIVATIONS[activation], bool(residual), block_h, save)
    return y.reshape(B, H, T, D).to(q.dtype), unflat(W), unflat(Wc), sq.reshape(B, H, T)


def dgd_self_unsupported_reason(request: ScanRequest) -> str | None:
    """``None`` when :func:`scan_dgd_self` computes ``request`` exactly, else why not."""
    memory, names = request.memory, request.names
    structure = getattr(memory, "structure", None)
    params = set(memory.param_shapes())
    mlp = structure in ("mlp", "residual-mlp") and params == {"W1", "W2"}
    if not ((structure == "linear" and params == {"W"}) or mlp):
        return (f"memory {names.get('memory')!r} has structure {structure!r}; the dgd "
                "self-target kernels compute a 'linear' memory (one param W) or an 'mlp' / "
                "'residual-mlp' one (W1, W2)")
    if mlp and getattr(memory, "activation_name", None) not in ACTIVATIONS:
        return (f"memory {names.get('memory')!r}: activation "
                f"{getattr(memory, 'activation_name', None)!r} is not one of {sorted(ACTIVATIONS)}")
    if reason := objective_reason(request):
        return reason
    if request.rule_structure != "dgd":
        return (f"optimizer {names.get('optimizer')!r} has structure "
                f"{request.rule_structure!r}; the kernels compute 'dgd' "
                "(W ← W((1 − α)I − θ k kᵀ) − θ g)")
    modes = [f"read={request.read!r} (the kernels read at the chunk start)"
             if request.read != "chunk_start" else "",
             f"write={request.write!r} (the kernels write every token)"
             if request.write != "token" else "",
             "self_target=False (the kernels' targets are M_{W_c}(v))"
             if not request.self_target else ""]
    if any(modes):
        return "; ".join(m for m in modes if m) + " is not supported"
    if reason := hyper_reason(request, frozenset({"lr", "decay"})):
        return reason
    D = request.q.shape[-1]
    if request.v.shape[-1] != D:
        return f"self targets need Dk = Dv; got {D} and {request.v.shape[-1]}"
    if mlp and D > MAX_MLP_DIM:
        return f"head dim {D} exceeds {MAX_MLP_DIM} for an mlp memory"
    if not mlp and request.grad_clip is not None and triton.next_power_of_2(D) ** 2 > MAX_CLIP_BLOCK:
        return (f"grad_clip needs every row of W in one program; head dim {D} exceeds "
                f"{int(MAX_CLIP_BLOCK ** 0.5)}")
    return dtype_device_reason(request)


def scan_dgd_self(request: ScanRequest, *, block_v: int | None = None,
                  block_h: int | None = None) -> tuple[Tensor, MemoryState]:
    """Run a request :func:`dgd_self_unsupported_reason` accepts; ``(y, state)`` as the
    reference backend returns them (DGD keeps no rule state: ``opt_state = {}``).
    ``block_v`` (linear: rows per program) and ``block_h`` (mlp: hidden units per tile)
    override the block sizes."""
    reason = dgd_self_unsupported_reason(request)
    if reason is not None:
        raise ValueError(f"dgd self-target kernels: {reason}")
    state, C, p = request.state, request.chunk_size, request.state.position
    q, k, v = request.q, request.k, request.v
    B, H, T, D = q.shape
    if T == 0:
        return q.new_zeros(B, H, 0, D), MemoryState(
            params=dict(state.params), opt_state={}, chunk_params=dict(state.chunk_params),
            position=p, chunk_size=C, step=state.step)
    lr, decay = request.hyper["lr"], request.hyper["decay"]
    affine = request.objective.affine_grad
    chunk0 = state.chunk_params if p else state.params
    if request.memory.structure == "linear":
        y, W, Wc, sq = dgd_self_target(
            q, k, v, lr, decay, state.params["W"], chunk0["W"], position=p, chunk_size=C,
            affine=affine, grad_clip=request.grad_clip, truncate=request.truncate,
            step=state.step, block_v=block_v)
        params, open_chunk = {"W": W}, {"W": Wc}
    else:
        y, params, open_chunk, sq = dgd_self_target_mlp(
            q, k, v, lr, decay, state.params, chunk0, position=p, chunk_size=C, affine=affine,
            activation=request.memory.activation_name,
            residual=request.memory.structure == "residual-mlp", grad_clip=request.grad_clip,
            truncate=request.truncate, step=state.step, block_h=block_h)
    position = (p + T) % C
    chunk_params = dict(params) if position == 0 else open_chunk
    surprise = sq.sqrt().mean(-1).to(q.dtype).detach()  # mean unclipped ‖δ_t‖ per (B, H)
    if not request.outputs:
        y = q.new_zeros(B, H, 0, D)
    return y, MemoryState(params=params, opt_state={}, chunk_params=chunk_params,
                          position=position, chunk_size=C, step=state.step + T,
                          surprise=surprise)
