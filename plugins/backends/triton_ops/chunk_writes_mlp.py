"""Fused forward and backward Triton kernels of the CMS level: a two-layer MLP memory
written once per chunk and read at the chunk start.

The level (``memory="mlp"`` or ``"residual-mlp"``, ``read="chunk_start"``,
``write="chunk"``, ``optimizer="momentum"``, targets ``v``; docs/concepts.md, NL arXiv
2512.24695 eqs. 71, 90; Titans arXiv 2501.00663 eqs. 9–13). Per (batch, head), chunk ``c``
with chunk-start parameters ``W_c = (W1 (Dh×Dk), W2 (Dv×Dh))``, momentum ``S`` and an
objective with an affine gradient ``∂ℓ/∂pred = a·pred + b·v`` (``l2`` (1, −1), ``dot``
(0, −1)), every token ``t`` of the chunk::

    z_t = W1 k_t;  h_t = σ(z_t);  pred_t = W2 h_t (+ k_t if residual)
    δ_t = a·pred_t + b·v_t;  e_t = (W2ᵀ δ_t) ∘ σ′(z_t)
    G1 += θ_t e_t k_tᵀ;  G2 += θ_t δ_t h_tᵀ
    y_t = M_{W_c}(q_t)                      (every read of the chunk sees its start state)

and at the chunk's last token ``j``: ``S ← η_j S − G;  W ← (1 − α_j) W + S;  G ← 0``.
A call may start inside a chunk (``position p > 0``): its first chunk takes its gradients
and reads at the state's ``chunk_params`` ``W_c``, starts from ``G = pending`` and updates
``params``; a chunk still open at the call's end returns its ``G`` as ``pending``.

**Blocks.** The grid is ``(B·H,)``: one program walks its head's chunks in order. The
weights, momentum and ``G`` stay in global memory (per-head working copies, flat
``[W1 | W2]``); each chunk is processed in blocks of ``BT = 16`` tokens (masked), and for
each token block the hidden dimension in blocks of ``BH = 16`` units: a ``BH × BK`` tile of
``W1`` and a ``BV × BH`` tile of ``W2`` (``BK, BV``: ``Dk, Dv`` rounded up to powers of two
≥ 16, masked) are loaded into registers together with the block's ``k, q, v`` rows. Pass 1
over the hidden blocks sums ``pred`` and the reads ``y``; pass 2 recomputes ``z`` and adds
the block's ``G1, G2`` tiles into ``G``. The update at a chunk's end runs over the flat
parameters. Products are ``tl.dot`` in full float32 (``input_precision="ieee"``); only
the token block's rows, its ``pred``/``δ``/``y`` rows and the current tiles are in registers.

**Backward.** The forward stores ``(W, S)`` at the start of every ``CK``-th chunk. The
backward walks the segments of ``CK`` chunks from the last: it recomputes the segment's
chunk-start states from its checkpoint into a scratch buffer, then runs the adjoints of
its chunks in reverse. With ``dW, dS`` the adjoints of ``W, S`` after chunk ``c`` and
``W, S`` before its write, a closing chunk (last token ``j``) gives::

    dS̄ = dS + dW;  dα_j = −⟨dW, W⟩;  dη_j = ⟨dS̄, S⟩;  dG = −dS̄
    dW ← (1 − α_j) dW;  dS ← η_j dS̄                  (an open last chunk: dG = d pending)

then per token (``g = dG1 k_t``, ``r = dG2 h_t``, ``u = W2ᵀ δ_t``)::

    dθ_t = ⟨e_t, g⟩ + ⟨δ_t, r⟩;  dδ_t = θ_t r + W2 (θ_t g ∘ σ′(z_t))
    dpred_t = a dδ_t;  dv_t = b dδ_t
    dh_t = θ_t dG2ᵀ δ_t + W2ᵀ dpred_t;  dz_t = θ_t g ∘ u ∘ σ″(z_t) + dh_t ∘ σ′(z_t)
    dz^q_t = (W2ᵀ dy_t) ∘ σ′(W1 q_t)
    dk_t = θ_t dG1ᵀ e_t + W1ᵀ dz_t (+ dpred_t);  dq_t = W1ᵀ dz^q_t (+ dy_t)
    dW1_c += Σ_t dz_t k_tᵀ + dz^q_t q_tᵀ
    dW2_c += Σ_t δ_t (θ_t g ∘ σ′(z_t))ᵀ + dpred_t h_tᵀ + dy_t σ(W1 q_t)ᵀ

(pass A recomputes ``δ``, pass B sums ``dθ, dδ``, pass C the rest), and ``dW += dW_c``
(the chunk's start state is the previous chunk's result; in an open first chunk it is
the state's ``chunk_params`` instead, and ``dG`` there is the gradient of ``pending``).

**Memory** (float32, per head, ``P = Dh·Dk + Dv·Dh``): checkpoints ``2P·⌈N/CK⌉`` for ``N``
chunks, scratch ``(2CK + 1)P``, working buffers about ``10P``; ``CK ≈ √N``.

Activations: the memory's exact ``gelu`` (``z Φ(z)``, erf), ``silu``, ``relu``,
``sigmoid``, ``tanh`` and ``identity``. The backward is differentiable once (no
second-order gradients through the kernels). Kernels and helpers are decorated by
``triton.jit`` on first use for the current ``TRITON_INTERPRET`` flag (each mode its own
namespace), so the flag in force at launch picks compiled or interpreted kernels.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.language.standard import _sum_combine as _add

from nlframe.interfaces import ScanRequest
from nlframe.level import MemoryState

from ..triton_backend import dtype_device_reason, hyper_reason, objective_reason
from .common import ACTIVATIONS, act, copy_flat, jit_in_namespace, per_mode

__all__ = ["ACTIVATIONS", "CMSScan", "block_sizes", "checkpoint_interval", "cms_scan",
           "cms_unsupported_reason", "scan_cms"]

# Sums are ``tl.reduce(x, axis, _add)`` with ``tl.sum``'s combine function: the
# interpreter sums these with numpy, and no jit function of Triton's own is called.

MAX_DIM = 128
"""Largest ``Dk`` / ``Dv``: at 128 the backward needs about 113 KiB of shared memory on
sm_90 (ptxas), at 256 about 224 KiB, more than most GPUs have."""

_IEEE: tl.constexpr = tl.constexpr("ieee")


# -- activations: σ, σ′, σ″ ---------------------------------------------------------------
# -- flat parameter vectors -----------------------------------------------------------------
def _fill0(dst, n, BLK: tl.constexpr):
    for off in range(0, n, BLK):
        r = off + tl.arange(0, BLK)
        tl.store(dst + r, tl.full((BLK,), 0.0, tl.float32), mask=r < n)


def _add_into(dst, src, n, BLK: tl.constexpr):
    """``dst[:n] += src[:n]``."""
    for off in range(0, n, BLK):
        r = off + tl.arange(0, BLK)
        m = r < n
        tl.store(dst + r, tl.load(dst + r, mask=m, other=0.0) + tl.load(src + r, mask=m, other=0.0),
                 mask=m)


def _update(w_in, s_in, g, w_out, s_out, n, alpha, eta, BLK: tl.constexpr):
    """The chunk's write: ``S = η S − G;  W = (1 − α) W + S;  G = 0``."""
    for off in range(0, n, BLK):
        r = off + tl.arange(0, BLK)
        m = r < n
        s = eta * tl.load(s_in + r, mask=m, other=0.0) - tl.load(g + r, mask=m, other=0.0)
        w = (1.0 - alpha) * tl.load(w_in + r, mask=m, other=0.0) + s
        tl.store(s_out + r, s, mask=m)
        tl.store(w_out + r, w, mask=m)
        tl.store(g + r, tl.full((BLK,), 0.0, tl.float32), mask=m)


# -- one chunk, forward ---------------------------------------------------------------------
def _chunk_forward(pt, gb, q, k, v, lr, y, sq, bh, T, Dk, Dv, Dh, cs, ce, a, b,
                   ACT: tl.constexpr, RES: tl.constexpr, READ: tl.constexpr, STATS: tl.constexpr,
                   BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BH: tl.constexpr):
    """Tokens ``cs ≤ t < ce`` at the point ``pt`` (flat ``[W1 | W2]``): ``G (gb) +=``
    their ``θ e kᵀ, θ δ hᵀ``; with ``READ`` the reads ``y``, with ``STATS`` ``‖δ_t‖²``."""
    rk = tl.arange(0, BK)
    rv = tl.arange(0, BV)
    rj = tl.arange(0, BH)
    mk = rk < Dk
    mv = rv < Dv
    n_hb = (Dh + BH - 1) // BH
    for t0 in range(cs, ce, BT):
        rt = t0 + tl.arange(0, BT)
        mt = rt < ce
        row = bh * T + rt
        mtk = mt[:, None] & mk[None, :]
        mtv = mt[:, None] & mv[None, :]
        K = tl.load(k + row[:, None] * Dk + rk[None, :], mask=mtk, other=0.0)
        V = tl.load(v + row[:, None] * Dv + rv[None, :], mask=mtv, other=0.0)
        th = tl.load(lr + row, mask=mt, other=0.0)
        pred = tl.full((BT, BV), 0.0, tl.float32)
        if READ:
            Q = tl.load(q + row[:, None] * Dk + rk[None, :], mask=mtk, other=0.0)
            yq = tl.full((BT, BV), 0.0, tl.float32)
        for jb in range(n_hb):  # pass 1: pred and the reads
            rh = jb * BH + rj
            mh = rh < Dh
            W1 = tl.load(pt + rh[:, None] * Dk + rk[None, :], mask=mh[:, None] & mk[None, :],
                         other=0.0)
            W2 = tl.load(pt + Dh * Dk + rv[:, None] * Dh + rh[None, :],
                         mask=mv[:, None] & mh[None, :], other=0.0)
            Z = tl.dot(K, tl.trans(W1), input_precision=_IEEE)
            pred += tl.dot(act(Z, ACT, 0)[0], tl.trans(W2), input_precision=_IEEE)
            if READ:
                Zq = tl.dot(Q, tl.trans(W1), input_precision=_IEEE)
                yq += tl.dot(act(Zq, ACT, 0)[0], tl.trans(W2), input_precision=_IEEE)
        if RES:
            pred += K
        delta = tl.where(mtv, a * pred + b * V, 0.0)
        if STATS:
            tl.store(sq + row, tl.reduce(delta * delta, 1, _add), mask=mt)
        if READ:
            if RES:
                yq += Q
            tl.store(y + row[:, None] * Dv + rv[None, :], yq, mask=mtv)
        tdelta = delta * th[:, None]
        for jb in range(n_hb):  # pass 2: G1 += θ e kᵀ, G2 += θ δ hᵀ
            rh = jb * BH + rj
            mh = rh < Dh
            m1 = mh[:, None] & mk[None, :]
            m2 = mv[:, None] & mh[None, :]
            o1 = rh[:, None] * Dk + rk[None, :]
            o2 = Dh * Dk + rv[:, None] * Dh + rh[None, :]
            W1 = tl.load(pt + o1, mask=m1, other=0.0)
            W2 = tl.load(pt + o2, mask=m2, other=0.0)
            Z = tl.dot(K, tl.trans(W1), input_precision=_IEEE)
            h, hd, _ = act(Z, ACT, 1)
            E = tl.dot(tdelta, W2, input_precision=_IEEE) * hd  # θ e
            g1 = tl.load(gb + o1, mask=m1, other=0.0)
            g2 = tl.load(gb + o2, mask=m2, other=0.0)
            tl.store(gb + o1, g1 + tl.dot(tl.trans(E), K, input_precision=_IEEE), mask=m1)
            tl.store(gb + o2, g2 + tl.dot(tl.trans(tdelta), h, input_precision=_IEEE), mask=m2)
        tl.debug_barrier()


def _forward_kernel(q, k, v, lr, decay, mom, work, S, G, y, sq, ckpt,
                    T, Dk, Dv, Dh, pos0, C, NC, NCK, a, b,
                    ACT: tl.constexpr, RES: tl.constexpr, READ: tl.constexpr,
                    SAVE: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
                    BH: tl.constexpr, CK: tl.constexpr, BLK: tl.constexpr):
    """Program ``bh``: all chunks of head ``bh``. ``work[bh] = [W | W_c of an open first
    chunk]``, ``S[bh]``, ``G[bh]`` are updated in place (final ``W``, ``S``, pending ``G``);
    ``ckpt[bh, i] = (W, S)`` at the start of chunk ``i·CK`` (``SAVE``)."""
    bh = tl.program_id(0).to(tl.int64)
    P = Dh * Dk + Dv * Dh
    wb = work + bh * 2 * P
    sb = S + bh * P
    gb = G + bh * P
    for c in range(NC):
        cs = tl.maximum(c * C - pos0, 0)
        ce = tl.minimum((c + 1) * C - pos0, T)
        if SAVE:  # noqa: SIM102 - a constexpr test, then a runtime one
            if c % CK == 0:
                cb = ckpt + (bh * NCK + c // CK) * 2 * P
                copy_flat(cb, wb, P, BLK)
                copy_flat(cb + P, sb, P, BLK)
        head = (c == 0) & (pos0 > 0)  # an open first chunk reads at the state's W_c
        pt = wb + tl.where(head, P, 0)
        _chunk_forward(pt, gb, q, k, v, lr, y, sq, bh, T, Dk, Dv, Dh, cs, ce, a, b,
                       ACT, RES, READ, True, BT, BK, BV, BH)
        if (c + 1) * C - pos0 <= T:  # the chunk closes in this call
            alpha = tl.load(decay + bh * T + ce - 1)
            eta = tl.load(mom + bh * T + ce - 1)
            _update(wb, sb, gb, wb, sb, P, alpha, eta, BLK)
            tl.debug_barrier()


# -- one chunk, backward --------------------------------------------------------------------
def _chunk_backward(pt, dgb, dpb, q, k, v, lr, dy, dq, dk, dv, dlr, bh, T, Dk, Dv, Dh, cs, ce,
                    a, b, ACT: tl.constexpr, RES: tl.constexpr, READ: tl.constexpr,
                    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BH: tl.constexpr):
    """Adjoints of tokens ``cs ≤ t < ce`` read and differentiated at ``pt`` given the
    chunk's ``dG`` (``dgb``): ``dq, dk, dv, dθ`` rows, and ``dW_c (dpb) +=`` theirs."""
    rk = tl.arange(0, BK)
    rv = tl.arange(0, BV)
    rj = tl.arange(0, BH)
    mk = rk < Dk
    mv = rv < Dv
    n_hb = (Dh + BH - 1) // BH
    for t0 in range(cs, ce, BT):
        rt = t0 + tl.arange(0, BT)
        mt = rt < ce
        row = bh * T + rt
        mtk = mt[:, None] & mk[None, :]
        mtv = mt[:, None] & mv[None, :]
        K = tl.load(k + row[:, None] * Dk + rk[None, :], mask=mtk, other=0.0)
        V = tl.load(v + row[:, None] * Dv + rv[None, :], mask=mtv, other=0.0)
        th = tl.load(lr + row, mask=mt, other=0.0)[:, None]
        if READ:
            Q = tl.load(q + row[:, None] * Dk + rk[None, :], mask=mtk, other=0.0)
            dY = tl.load(dy + row[:, None] * Dv + rv[None, :], mask=mtv, other=0.0)
        # pass A: δ
        pred = tl.full((BT, BV), 0.0, tl.float32)
        for jb in range(n_hb):
            rh = jb * BH + rj
            mh = rh < Dh
            W1 = tl.load(pt + rh[:, None] * Dk + rk[None, :], mask=mh[:, None] & mk[None, :],
                         other=0.0)
            W2 = tl.load(pt + Dh * Dk + rv[:, None] * Dh + rh[None, :],
                         mask=mv[:, None] & mh[None, :], other=0.0)
            Z = tl.dot(K, tl.trans(W1), input_precision=_IEEE)
            pred += tl.dot(act(Z, ACT, 0)[0], tl.trans(W2), input_precision=_IEEE)
        if RES:
            pred += K
        delta = tl.where(mtv, a * pred + b * V, 0.0)
        # pass B: dθ and dδ
        ddelta = tl.full((BT, BV), 0.0, tl.float32)
        dth = tl.full((BT,), 0.0, tl.float32)
        for jb in range(n_hb):
            rh = jb * BH + rj
            mh = rh < Dh
            m1 = mh[:, None] & mk[None, :]
            m2 = mv[:, None] & mh[None, :]
            o1 = rh[:, None] * Dk + rk[None, :]
            o2 = Dh * Dk + rv[:, None] * Dh + rh[None, :]
            W1 = tl.load(pt + o1, mask=m1, other=0.0)
            W2 = tl.load(pt + o2, mask=m2, other=0.0)
            dG1 = tl.load(dgb + o1, mask=m1, other=0.0)
            dG2 = tl.load(dgb + o2, mask=m2, other=0.0)
            Z = tl.dot(K, tl.trans(W1), input_precision=_IEEE)
            h, hd, _ = act(Z, ACT, 1)
            U = tl.dot(delta, W2, input_precision=_IEEE)  # (BT, BH): W2ᵀ δ
            gk = tl.dot(K, tl.trans(dG1), input_precision=_IEEE)  # rows dG1 k_t
            gh = tl.dot(h, tl.trans(dG2), input_precision=_IEEE)  # rows dG2 h_t
            dth += tl.reduce(U * hd * gk, 1, _add) + tl.reduce(delta * gh, 1, _add)
            ddelta += th * gh + tl.dot(th * gk * hd, tl.trans(W2), input_precision=_IEEE)
        tl.store(dlr + row, dth, mask=mt)
        tl.store(dv + row[:, None] * Dv + rv[None, :], b * ddelta, mask=mtv)
        dpred = a * ddelta
        # pass C: dz, dk, dq and dW_c
        dK = tl.full((BT, BK), 0.0, tl.float32)
        if READ:
            dQ = tl.full((BT, BK), 0.0, tl.float32)
        for jb in range(n_hb):
            rh = jb * BH + rj
            mh = rh < Dh
            m1 = mh[:, None] & mk[None, :]
            m2 = mv[:, None] & mh[None, :]
            o1 = rh[:, None] * Dk + rk[None, :]
            o2 = Dh * Dk + rv[:, None] * Dh + rh[None, :]
            W1 = tl.load(pt + o1, mask=m1, other=0.0)
            W2 = tl.load(pt + o2, mask=m2, other=0.0)
            dG1 = tl.load(dgb + o1, mask=m1, other=0.0)
            dG2 = tl.load(dgb + o2, mask=m2, other=0.0)
            Z = tl.dot(K, tl.trans(W1), input_precision=_IEEE)
            h, hd, hdd = act(Z, ACT, 2)
            U = tl.dot(delta, W2, input_precision=_IEEE)
            de = th * tl.dot(K, tl.trans(dG1), input_precision=_IEEE)  # θ dG1 k_t
            du = de * hd
            dh = th * tl.dot(delta, dG2, input_precision=_IEEE) + tl.dot(dpred, W2,
                                                                          input_precision=_IEEE)
            dZ = de * U * hdd + dh * hd
            dK += th * tl.dot(U * hd, dG1, input_precision=_IEEE) + tl.dot(dZ, W1,
                                                                           input_precision=_IEEE)
            dP1 = tl.dot(tl.trans(dZ), K, input_precision=_IEEE)
            dP2 = (tl.dot(tl.trans(delta), du, input_precision=_IEEE)
                   + tl.dot(tl.trans(dpred), h, input_precision=_IEEE))
            if READ:
                Zq = tl.dot(Q, tl.trans(W1), input_precision=_IEEE)
                hq, hqd, _ = act(Zq, ACT, 1)
                dZq = tl.dot(dY, W2, input_precision=_IEEE) * hqd
                dQ += tl.dot(dZq, W1, input_precision=_IEEE)
                dP1 += tl.dot(tl.trans(dZq), Q, input_precision=_IEEE)
                dP2 += tl.dot(tl.trans(dY), hq, input_precision=_IEEE)
            tl.store(dpb + o1, tl.load(dpb + o1, mask=m1, other=0.0) + dP1, mask=m1)
            tl.store(dpb + o2, tl.load(dpb + o2, mask=m2, other=0.0) + dP2, mask=m2)
        if RES:
            dK += dpred
        tl.store(dk + row[:, None] * Dk + rk[None, :], dK, mask=mtk)
        if READ:
            if RES:
                dQ += dY
            tl.store(dq + row[:, None] * Dk + rk[None, :], dQ, mask=mtk)
        tl.debug_barrier()


def _backward_kernel(q, k, v, lr, decay, mom, dy, g0, ckpt, scratch, gs, dW, dS, dG, dP,
                     dq, dk, dv, dlr, ddecay, dmom,
                     T, Dk, Dv, Dh, pos0, C, NC, NCK, a, b,
                     ACT: tl.constexpr, RES: tl.constexpr, READ: tl.constexpr,
                     BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, BH: tl.constexpr,
                     CK: tl.constexpr, BLK: tl.constexpr):
    """Program ``bh``: the adjoints (module docstring) segment by segment from the last.
    ``scratch[bh] = [W_c of an open first chunk | (W, S) at the start of each of the
    segment's chunks]``; ``dW, dS, dG`` hold the adjoints of the final ``W, S, G`` and end
    as the gradients of the initial ``W, S`` and (open first chunk) ``pending``; ``dP``
    ends as that chunk's ``dW_c``. ``ddecay``, ``dmom`` must be zero-filled."""
    bh = tl.program_id(0).to(tl.int64)
    P = Dh * Dk + Dv * Dh
    scr = scratch + bh * (2 * CK + 1) * P
    gsb = gs + bh * P
    dwb = dW + bh * P
    dsb = dS + bh * P
    dgb = dG + bh * P
    dpb = dP + bh * P
    for si in range(NCK):
        seg = NCK - 1 - si
        c0 = seg * CK
        nc = tl.minimum(c0 + CK, NC) - c0
        copy_flat(scr + P, ckpt + (bh * NCK + seg) * 2 * P, 2 * P, BLK)
        tl.debug_barrier()
        for i in range(nc - 1):  # recompute the start states of the segment's chunks
            c = c0 + i
            cs = tl.maximum(c * C - pos0, 0)
            ce = (c + 1) * C - pos0  # closes: it is not the call's last chunk
            head = (c == 0) & (pos0 > 0)
            if head:
                copy_flat(gsb, g0 + bh * P, P, BLK)
            else:
                _fill0(gsb, P, BLK)
            tl.debug_barrier()
            st = scr + P + 2 * i * P
            _chunk_forward(scr + tl.where(head, 0, P + 2 * i * P), gsb, q, k, v, lr, q, q, bh,
                           T, Dk, Dv, Dh, cs, ce, a, b, ACT, RES, False, False, BT, BK, BV, BH)
            alpha = tl.load(decay + bh * T + ce - 1)
            eta = tl.load(mom + bh * T + ce - 1)
            _update(st, st + P, gsb, st + 2 * P, st + 3 * P, P, alpha, eta, BLK)
            tl.debug_barrier()
        for r in range(nc):  # the adjoints, last chunk first
            i = nc - 1 - r
            c = c0 + i
            cs = tl.maximum(c * C - pos0, 0)
            ce = tl.minimum((c + 1) * C - pos0, T)
            st = scr + P + 2 * i * P
            if (c + 1) * C - pos0 <= T:  # the write at the chunk's last token
                alpha = tl.load(decay + bh * T + ce - 1)
                eta = tl.load(mom + bh * T + ce - 1)
                acc_a = tl.full((BLK,), 0.0, tl.float32)
                acc_e = tl.full((BLK,), 0.0, tl.float32)
                for off in range(0, P, BLK):
                    rr = off + tl.arange(0, BLK)
                    m = rr < P
                    dw = tl.load(dwb + rr, mask=m, other=0.0)
                    dsum = tl.load(dsb + rr, mask=m, other=0.0) + dw
                    acc_a += dw * tl.load(st + rr, mask=m, other=0.0)
                    acc_e += dsum * tl.load(st + P + rr, mask=m, other=0.0)
                    tl.store(dgb + rr, -dsum, mask=m)
                    tl.store(dwb + rr, (1.0 - alpha) * dw, mask=m)
                    tl.store(dsb + rr, eta * dsum, mask=m)
                tl.store(ddecay + bh * T + ce - 1, -tl.reduce(acc_a, 0, _add))
                tl.store(dmom + bh * T + ce - 1, tl.reduce(acc_e, 0, _add))
            head = (c == 0) & (pos0 > 0)
            _fill0(dpb, P, BLK)
            tl.debug_barrier()
            _chunk_backward(scr + tl.where(head, 0, P + 2 * i * P), dgb, dpb, q, k, v, lr, dy,
                            dq, dk, dv, dlr, bh, T, Dk, Dv, Dh, cs, ce, a, b,
                            ACT, RES, READ, BT, BK, BV, BH)
            if (c > 0) | (pos0 == 0):  # its start state is the previous chunk's result
                _add_into(dwb, dpb, P, BLK)
            tl.debug_barrier()


_HELPERS = ("act", "copy_flat", "_fill0", "_add_into", "_update",
            "_chunk_forward", "_chunk_backward")
_JIT: dict[bool, tuple] = {}


def kernels():
    """``(forward, backward)`` decorated by ``triton.jit`` for the current interpreter
    flag; the kernels and helpers of each mode resolve each other in their own namespace."""
    return per_mode(_JIT, lambda: jit_in_namespace(globals(), _HELPERS,
                                                   (_forward_kernel, _backward_kernel)))


# -- sizes ----------------------------------------------------------------------------------
def block_sizes(dim_k: int, dim_v: int, dim_h: int,
                block_h: int | None = None) -> tuple[int, int, int, int]:
    """``(BT, BK, BV, BH)``: token, key, value and hidden block sizes, powers of two ≥ 16
    (``tl.dot``): 16 tokens, ``BK, BV`` covering ``Dk, Dv``, 16 hidden units (``block_h``
    overrides it). With 8 warps this is where ptxas (sm_90) reports the fewest register
    spills."""
    BK = max(16, triton.next_power_of_2(dim_k))
    BV = max(16, triton.next_power_of_2(dim_v))
    if block_h is not None and (block_h < 16 or block_h & (block_h - 1)):
        raise ValueError(f"block_h must be a power of two >= 16, got {block_h}")
    BH = block_h or 16
    return 16, BK, BV, BH


def checkpoint_interval(n_chunks: int) -> int:
    """``CK``: about ``√N`` chunks (a power of two in [1, 64]); checkpoints and scratch cost
    ``2⌈N/CK⌉ + 2CK + 1`` parameter vectors per head."""
    return min(64, triton.next_power_of_2(math.isqrt(max(n_chunks - 1, 0)) + 1))


NUM_WARPS = 8


# -- autograd -------------------------------------------------------------------------------
class CMSScan(torch.autograd.Function):
    """The level on ``(BH, T, ·)`` float32 contiguous tensors and flat ``[W1 | W2]``
    parameter vectors ``(BH, P)``.

    ``forward(q, k, v, θ, α, η, W0, S0, Wc0, G0, cfg)`` → ``y (BH, T, Dv)`` (empty without
    reads), final ``W, S``, pending ``G`` ``(BH, P)`` and ``‖δ_t‖² (BH, T)`` (not
    differentiable). ``Wc0``, ``G0``: the open first chunk's start point and accumulated
    step (used only when ``cfg["position"] > 0``)."""

    @staticmethod
    def forward(ctx, q, k, v, lr, decay, mom, W0, S0, Wc0, G0, cfg):  # type: ignore[override]
        BHn, T, Dk = q.shape
        Dv, Dh, pos0, C = v.shape[-1], cfg["dim_h"], cfg["position"], cfg["chunk"]
        P = W0.shape[-1]
        NC = -(-(pos0 + T) // C)
        CK = cfg["ckpt"] or checkpoint_interval(NC)
        NCK = -(-NC // CK)
        BT, BK, BV, BH = block_sizes(Dk, Dv, Dh, cfg["block_h"])
        save = any(ctx.needs_input_grad[:10])
        work = q.new_empty(BHn, 2, P)
        work[:, 0] = W0
        if pos0:
            work[:, 1] = Wc0
        S = S0.clone()
        G = G0.clone() if pos0 else torch.zeros_like(S0)
        y = q.new_empty(BHn, T, Dv) if cfg["read"] else q.new_empty(BHn, 0, Dv)
        sq = q.new_empty(BHn, T)
        ckpt = q.new_empty(BHn, NCK, 2, P) if save else q.new_empty(1)
        fwd, _ = kernels()
        fwd[(BHn,)](q, k, v, lr, decay, mom, work, S, G, y, sq, ckpt,
                    T, Dk, Dv, Dh, pos0, C, NC, NCK, cfg["a"], cfg["b"],
                    ACT=cfg["act"], RES=cfg["residual"], READ=cfg["read"], SAVE=save,
                    BT=BT, BK=BK, BV=BV, BH=BH, CK=CK, BLK=1024, num_warps=NUM_WARPS)
        if save:
            ctx.save_for_backward(q, k, v, lr, decay, mom, Wc0, G0, ckpt)
        ctx.cfg, ctx.sizes = cfg, (NC, CK, NCK, BT, BK, BV, BH)
        ctx.mark_non_differentiable(sq)
        return y, work[:, 0].clone(), S, G, sq

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dW, dS, dG, _dsq):  # type: ignore[override]
        q, k, v, lr, decay, mom, Wc0, G0, ckpt = ctx.saved_tensors
        cfg = ctx.cfg
        NC, CK, NCK, BT, BK, BV, BH = ctx.sizes
        BHn, T, Dk = q.shape
        Dv, Dh, pos0, C = v.shape[-1], cfg["dim_h"], cfg["position"], cfg["chunk"]
        P = ckpt.shape[-1]

        def buf(g: Tensor | None) -> Tensor:
            return q.new_zeros(BHn, P) if g is None else g.float().contiguous().clone()

        dW, dS, dG = buf(dW), buf(dS), buf(dG)
        if cfg["read"]:
            dy = q.new_zeros(BHn, T, Dv) if dy is None else dy.float().contiguous()
        else:
            dy = q.new_empty(1)
        scratch = q.new_empty(BHn, 2 * CK + 1, P)
        if pos0:
            scratch[:, 0] = Wc0
        gs, dP = q.new_empty(BHn, P), q.new_empty(BHn, P)
        dq = torch.empty_like(q) if cfg["read"] else torch.zeros_like(q)
        dk, dv, dlr = torch.empty_like(k), torch.empty_like(v), torch.empty_like(lr)
        ddecay, dmom = torch.zeros_like(decay), torch.zeros_like(mom)
        _, bwd = kernels()
        bwd[(BHn,)](q, k, v, lr, decay, mom, dy, G0, ckpt, scratch, gs, dW, dS, dG, dP,
                    dq, dk, dv, dlr, ddecay, dmom,
                    T, Dk, Dv, Dh, pos0, C, NC, NCK, cfg["a"], cfg["b"],
                    ACT=cfg["act"], RES=cfg["residual"], READ=cfg["read"],
                    BT=BT, BK=BK, BV=BV, BH=BH, CK=CK, BLK=1024, num_warps=NUM_WARPS)
        head = bool(pos0)
        return (dq, dk, dv, dlr, ddecay, dmom, dW, dS, dP if head else None,
                dG if head else None, None)


def cms_scan(q: Tensor, k: Tensor, v: Tensor, lr: Tensor, decay: Tensor, mom: Tensor,
             params: dict[str, Tensor], momentum: dict[str, Tensor],
             chunk_params: dict[str, Tensor] | None, pending: dict[str, Tensor] | None, *,
             position: int, chunk_size: int, affine: tuple[float, float], activation: str,
             residual: bool, outputs: bool = True, checkpoint_every: int | None = None,
             block_h: int | None = None):
    """The level on ``(B, H, ·)`` tensors: q, k ``(B, H, T, Dk)``, v ``(B, H, T, Dv)``,
    gates ``(B, H, T)``, ``params`` / ``momentum`` / ``chunk_params`` / ``pending``
    ``{"W1": (B, H, Dh, Dk), "W2": (B, H, Dv, Dh)}`` (the last two used only when
    ``position > 0``). Computed in float32, differentiable in every tensor.

    Returns ``y`` (``(B, H, T, Dv)``, or ``T = 0`` without ``outputs``), final params,
    momentum and pending step (dicts, in q's dtype; the pending step is zero when the call
    ends at a chunk boundary) and ``‖δ_t‖² (B, H, T)`` (float32, not differentiable)."""
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    Dh = params["W1"].shape[-2]
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} has no Triton implementation; "
                         f"supported: {sorted(ACTIVATIONS)}")
    if residual and Dk != Dv:
        raise ValueError(f"a residual MLP needs Dk == Dv, got {Dk}, {Dv}")

    def seq(x: Tensor, *shape: int) -> Tensor:
        return x.float().reshape(B * H, *shape).contiguous()

    def flat(tree: dict[str, Tensor]) -> Tensor:
        return torch.cat([tree["W1"].float().reshape(B * H, Dh * Dk),
                          tree["W2"].float().reshape(B * H, Dv * Dh)], 1)

    W0, S0 = flat(params), flat(momentum)
    if position:
        Wc0, G0 = flat(chunk_params), flat(pending)
    else:
        Wc0 = G0 = W0.new_zeros(1)
    cfg = {"dim_h": Dh, "position": int(position), "chunk": int(chunk_size),
           "a": float(affine[0]), "b": float(affine[1]), "act": ACTIVATIONS[activation],
           "residual": bool(residual), "read": bool(outputs), "ckpt": checkpoint_every,
           "block_h": block_h}
    y, W, S, G, sq = CMSScan.apply(seq(q, T, Dk), seq(k, T, Dk), seq(v, T, Dv), seq(lr, T),
                                   seq(decay, T), seq(mom, T), W0, S0, Wc0, G0, cfg)

    def unflat(x: Tensor) -> dict[str, Tensor]:
        w1, w2 = x.split([Dh * Dk, Dv * Dh], 1)
        return {"W1": w1.reshape(B, H, Dh, Dk).to(q.dtype),
                "W2": w2.reshape(B, H, Dv, Dh).to(q.dtype)}

    y = y.reshape(B, H, y.shape[1], Dv).to(q.dtype)
    return y, unflat(W), unflat(S), unflat(G), sq.reshape(B, H, T)


# -- the scan contract ----------------------------------------------------------------------
def cms_unsupported_reason(request: ScanRequest) -> str | None:
    """``None`` when :func:`scan_cms` computes ``request`` exactly; else why not."""
    memory, names = request.memory, request.names
    mem_name = names.get("memory")
    if memory.structure not in ("mlp", "residual-mlp") or \
            set(memory.param_shapes()) != {"W1", "W2"}:
        return (f"memory {mem_name!r} has structure {memory.structure!r}; the CMS kernels "
                "compute 'mlp' and 'residual-mlp' memories (params W1, W2)")
    act = getattr(memory, "activation_name", None)
    if act not in ACTIVATIONS:
        return (f"memory {mem_name!r}: activation {act!r} has no Triton implementation "
                f"(supported: {sorted(ACTIVATIONS)})")
    if reason := objective_reason(request):
        return reason
    if request.rule_structure != "momentum":
        return (f"optimizer {names.get('optimizer')!r} has structure "
                f"{request.rule_structure!r}; the CMS kernels compute 'momentum'")
    if (request.read, request.write, request.self_target) != ("chunk_start", "chunk", False):
        return (f"read={request.read!r}, write={request.write!r}, self_target="
                f"{request.self_target}: the CMS kernels compute read='chunk_start', "
                "write='chunk' with targets v")
    if request.grad_clip is not None:
        return f"grad_clip={request.grad_clip} is not supported (no per-token clipping)"
    if request.truncate:
        return "truncate=True is not supported"
    if reason := hyper_reason(request, frozenset({"lr", "decay", "momentum"})):
        return reason
    for name in ("decay", "momentum"):
        default = getattr(request.rule, "defaults", {}).get(name, 0.0)
        if name not in request.hyper and not isinstance(default, Real):
            return f"the rule's default {name} is not a number"
    Dk, Dv = request.q.shape[-1], request.v.shape[-1]
    if max(Dk, Dv) > MAX_DIM:
        return f"Dk = {Dk}, Dv = {Dv}: the CMS kernels take widths up to {MAX_DIM}"
    return dtype_device_reason(request)


def scan_cms(request: ScanRequest, **options: Any) -> tuple[Tensor, MemoryState]:
    """Run ``request`` with the CMS kernels; the returned :class:`MemoryState` is built as
    ``scan_within_chunk_tiles`` builds it for this mode. ``options``: ``checkpoint_every``
    (``CK``) and ``block_h`` (``BH``) of :func:`cms_scan`. ``ValueError`` for a request
    :func:`cms_unsupported_reason` declines."""
    reason = cms_unsupported_reason(request)
    if reason is not None:
        raise ValueError(f"scan_cms cannot compute this scan: {reason}")
    state, C, p = request.state, request.chunk_size, request.state.position
    q = request.q
    T = q.shape[2]
    lr = request.hyper["lr"]
    # make_request hands a rule's non-zero default decay / momentum over as a gate
    gate = {n: request.hyper.get(n, torch.zeros_like(lr)) for n in ("decay", "momentum")}
    y, W, S, G, sq = cms_scan(
        q, request.k, request.v, lr, gate["decay"], gate["momentum"], state.params,
        state.opt_state["momentum"], state.chunk_params if p else None,
        state.pending if p else None, position=p, chunk_size=C,
        affine=request.objective.affine_grad, activation=request.memory.activation_name,
        residual=request.memory.structure == "residual-mlp", outputs=request.outputs,
        **options)
    if p + T < C:  # no chunk closes: params and momentum pass through (as in the reference)
        W, S = dict(state.params), dict(state.opt_state["momentum"])
    position = (p + T) % C
    opened = p == 0 or p + T > C  # a chunk opened in this call: W_c is the current W
    chunk_params = dict(W) if (position == 0 or opened) else dict(state.chunk_params)
    pending = {} if position == 0 else G
    surprise = sq.sqrt().mean(-1).to(q.dtype).detach()
    return y, MemoryState(params=W, opt_state={"momentum": S}, chunk_params=chunk_params,
                          position=position, chunk_size=C, step=state.step + T,
                          pending=pending, surprise=surprise)
