"""Chunk-parallel scan of a linear memory ``M_W(x) = W x`` with the momentum rule.

Two tile loops, both sequential over tiles only (every per-token product is a
batched matmul over a whole tile):

* :func:`scan_within_chunks` — every tile lies inside one chunk, so its gradient
  point ``W_g`` (the chunk-start parameters) is known when the tile starts;
  any objective: ``E = ψ(K W_gᵀ, V)`` with ``ψ = ∂ℓ/∂pred``.
* :func:`scan_aligned` — tiles of ``L = mC`` tokens aligned to chunk starts, for
  an affine objective ``ψ(p, v) = a p + b v``: the in-tile gradient points are
  solved for in closed form (UT transform of DeltaNet arXiv 2406.06484 and
  Gated DeltaNet arXiv 2412.06464, generalised to momentum and chunks).

Per tile starting from ``(W_b, S_b)`` (tiles.py for ``D, c, P, A, Bθ``), with
``e_i = ∂ℓ/∂pred_i`` at token i's gradient point and ``g_i = e_i k_iᵀ``::

    Y   = D∘(Q W_bᵀ) + c∘(Q S_bᵀ) − (A∘(Q Kᵀ)) E
    W_L = D_L W_b + c_L S_b − Eᵀ(A_{L,:}ᵀ∘K)
    S_L = P_L S_b − Eᵀ((Bθ)_{L,:}ᵀ∘K)

Matrices are ``(n, B, H, ...)``, tile-major and contiguous; the loop works on
``(B, H, ...)`` slices with fused ``baddbmm``-style updates.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .tiles import Tiles, per_tile, side_by_side


def _acc(out: Tensor, a: Tensor, b: Tensor, alpha: float = 1.0) -> Tensor:
    """``out += alpha · a @ b`` in place over leading dims (``out`` is a fresh buffer)."""
    flat = out.view(-1, *out.shape[-2:])
    flat.baddbmm_(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]), alpha=alpha)
    return out


def scan_within_chunks(tiles: Tiles, W: Tensor, S: Tensor, Wg: Tensor,
                       psi: Callable[[Tensor, Tensor], Tensor]):
    """Tiles inside chunks, gradients at the chunk start: ``E = ψ(K W_gᵀ, V)``.

    ``W, S, Wg: (B, H, Dv, Dk)`` (``Wg`` is used until a tile opens a chunk).
    Returns ``y (n, B, H, L, Dv)``, the final ``W, S``, the last chunk start ``W_g`` and
    ``‖e_i‖ (n, B, H, L)``.
    """
    K, V, Dk = tiles.k, tiles.v, W.shape[-1]
    M = tiles.gates.A * (tiles.q @ K.transpose(-1, -2))  # (n, B, H, L, L)
    KAB = side_by_side(K, -tiles.aL, -tiles.bL)  # (n, B, H, L, 2Dk)
    X = torch.cat([W, S], -1)  # joint state [W | S]: (B, H, Dv, 2Dk)
    Ks, Vs, QDCs, Ms, KABs = per_tile(K, V, tiles.qdc, M, KAB)
    ys, norms = [], []
    for t, opens in enumerate(tiles.plan.opens_chunk):
        if opens:
            Wg = X[..., :Dk]
        E = psi(Ks[t] @ Wg.transpose(-1, -2), Vs[t])  # (B, H, L, Dv)
        norms.append(E.norm(dim=-1))
        ys.append(_acc(QDCs[t] @ X.transpose(-1, -2), Ms[t], E, alpha=-1.0))
        X = tiles.advance_joint(t, X, E, KABs[t])
    return (torch.stack(ys), X[..., :Dk].contiguous(), X[..., Dk:].contiguous(), Wg.contiguous(),
            torch.stack(norms))


def scan_aligned(tiles: Tiles, W: Tensor, S: Tensor, chunk: int, a: float, b: float,
                 momentum: bool = True):
    """Chunk-aligned tiles (``L`` a multiple of ``C``), affine ``ψ(p, v) = a p + b v``.

    Token i of a tile takes its gradient at ``W_{s(i)}``, ``s(i) = C⌊i/C⌋ − 1``
    (``W_{−1} = W_b``). Substituting the chunk form of ``W_s`` into ``e_i`` gives a
    unit lower-triangular system whose matrix does not depend on ``W_b, S_b``::

        e_i + a Σ_{m≤s(i)} A_{s(i),m} (k_m·k_i) e_m = a (D_{s(i)} W_b + c_{s(i)} S_b) k_i + b v_i
        (I + N) E = a D̃∘(K W_bᵀ) + a c̃∘(K S_bᵀ) + b V
        E = (G_D K) W_bᵀ + (G_C K) S_bᵀ + E_V,   G_D = (I+N)⁻¹ diag(a D̃),  G_C = (I+N)⁻¹ diag(a c̃)

    Everything state-independent is computed for all tiles at once (``(I+N)⁻¹``,
    ``[D∘Q | c∘Q]``, ``[aD̃∘K | ac̃∘K]``, ``E_V = b (I+N)⁻¹ V``, ``A∘(Q Kᵀ)``, the write
    rows), so the loop over tiles is five batched matmuls (three of them fused
    ``baddbmm``-style) and two elementwise updates of the joint state
    ``X = [W_b | S_b]: (BH, Dv, 2Dk)``::

        E = E_V + (I+N)⁻¹ ([aD̃∘K | ac̃∘K] Xᵀ),   Y = [D∘Q | c∘Q] Xᵀ − (A∘(Q Kᵀ)) E,
        X ← Γ∘X + Eᵀ[−A_{L,:}ᵀ∘K | −(Bθ)_{L,:}ᵀ∘K]

    ``momentum=False`` (``η ≡ 0``: the delta rule, DeltaNet, linear attention): then
    ``c = P = 0`` and ``Bθ = diag(θ)``, so ``S_b`` enters nothing and the loop carries
    ``W`` alone (half the state products); the returned ``S = −θ_T e_T k_Tᵀ`` is the
    last token's step.

    Returns ``y (n, B, H, L, Dv)``, final ``W, S``, the parameters at the start
    of the last (possibly unfinished) chunk, and ``‖e_i‖ (n, B, H, L)``.
    """
    if not momentum:
        return _scan_aligned_without_momentum(tiles, W, chunk, a, b)
    n, B, H, L, Dk = tiles.k.shape
    Dv, BH = W.shape[-2], B * H
    Q, K, V = (x.reshape(n, BH, L, -1) for x in (tiles.q, tiles.k, tiles.v))  # views
    M, Tinv, KDC, EV = _solve_rows(tiles, chunk, a, b, Q, K, V, with_momentum=True)
    QDC = tiles.qdc.reshape(n, BH, L, 2 * Dk)
    KAB = side_by_side(K, -tiles.aL.reshape(n, BH, L), -tiles.bL.reshape(n, BH, L))
    # Γ∘X = [D_L W | P_L S] + [c_L S | 0]: per-tile coefficient rows (n, BH, 1, 2Dk)
    DP = torch.cat([tiles.DL.reshape(n, BH, 1, 1).expand(n, BH, 1, Dk),
                    tiles.PL.reshape(n, BH, 1, 1).expand(n, BH, 1, Dk)], -1)
    cL = tiles.cL.reshape(n, BH, 1, 1)

    def advance(X: Tensor, X_b: Tensor, t: int) -> Tensor:
        X.addcmul_(DP[t], X_b)
        X[..., :Dk].addcmul_(cL[t], X_b[..., Dk:])
        return X

    X = torch.cat([W, S], -1).reshape(BH, Dv, 2 * Dk)  # joint state [W | S]
    y, norms, X, X_b, E = _tile_loop(X, a, EV, Tinv, KDC, QDC, M, KAB, advance)
    y = y.reshape(n, B, H, L, Dv)
    W, S = (X[..., i:i + Dk].reshape(B, H, Dv, Dk).contiguous() for i in (0, Dk))
    W_b, S_b = (X_b[..., i:i + Dk].reshape(B, H, Dv, Dk) for i in (0, Dk))
    E = E.reshape(B, H, L, Dv)
    W_cs = _last_chunk_start(tiles, chunk, W_b, S_b, E)
    return y, W, S, W_cs, norms.reshape(n, B, H, L)


def _scan_aligned_without_momentum(tiles: Tiles, W: Tensor, chunk: int, a: float, b: float):
    """:func:`scan_aligned` at ``η ≡ 0``: the loop carries ``W`` alone::

        E = E_V + (I+N)⁻¹ ((aD̃∘K) W_bᵀ),   Y = (D∘Q) W_bᵀ − (A∘(Q Kᵀ)) E,
        W ← D_L W_b − Eᵀ(A_{L,:}ᵀ∘K),       S = −θ_T e_T k_Tᵀ (the last step)
    """
    g = tiles.gates
    n, B, H, L, Dk = tiles.k.shape
    Dv, BH = W.shape[-2], B * H
    Q, K, V = (x.reshape(n, BH, L, -1) for x in (tiles.q, tiles.k, tiles.v))  # views
    M, Tinv, KD, EV = _solve_rows(tiles, chunk, a, b, Q, K, V, with_momentum=False)
    QD = Q * g.D.reshape(n, BH, L, 1)  # D∘Q
    KA = K * tiles.aL.reshape(n, BH, L, 1).neg()  # −A_{L,:}ᵀ∘K
    DL = tiles.DL.reshape(n, BH, 1, 1)

    def advance(X: Tensor, X_b: Tensor, t: int) -> Tensor:
        return X.addcmul_(DL[t], X_b)

    y, norms, X, X_b, E = _tile_loop(W.reshape(BH, Dv, Dk), a, EV, Tinv, KD, QD, M, KA, advance)
    y = y.reshape(n, B, H, L, Dv)
    W_b = X_b.reshape(B, H, Dv, Dk)
    E = E.reshape(B, H, L, Dv)
    # S_T = −θ_T g_T: the last tile's row of Bθ = diag(θ) holds θ at the last token only
    S = E.transpose(-1, -2) @ (tiles.k[-1] * tiles.bL[-1, ..., None].neg())
    W_cs = _last_chunk_start(tiles, chunk, W_b, None, E)
    return y, X.reshape(B, H, Dv, Dk), S, W_cs, norms.reshape(n, B, H, L)


def _tile_loop(X: Tensor, a: float, EV: Tensor, Tinv: Tensor | None, KD: Tensor | None,
               QD: Tensor, M: Tensor, KA: Tensor,
               advance: Callable[[Tensor, Tensor, int], Tensor]) -> tuple:
    """The loop over tiles of :func:`scan_aligned` (joint state or ``W`` alone)::

        E = E_V + (I+N)⁻¹ (KD X_bᵀ),   Y = QD X_bᵀ − (A∘(Q Kᵀ)) E,   X = advance(Eᵀ KA, X_b)

    Returns the stacked ``Y``, ``‖e_i‖``, the final and last tile's start state and its ``E``."""
    ys, norms = [], []
    EV, QD, M, KA = per_tile(EV, QD, M, KA)
    if a != 0.0:
        Tinv, KD = per_tile(Tinv, KD)
    for t in range(len(EV)):
        X_b = X
        Xt = X.transpose(-1, -2)  # (BH, Dk or 2Dk, Dv)
        E = torch.baddbmm(EV[t], Tinv[t], torch.bmm(KD[t], Xt)) if a != 0.0 else EV[t]
        norms.append(E.norm(dim=-1))
        ys.append(torch.baddbmm(torch.bmm(QD[t], Xt), M[t], E))  # Y: (BH, L, Dv)
        X = advance(torch.bmm(E.transpose(-1, -2), KA[t]), X_b, t)
    return torch.stack(ys), torch.stack(norms), X, X_b, E


def _last_chunk_start(tiles: Tiles, chunk: int, W_b: Tensor, S_b: Tensor | None,
                      E: Tensor) -> Tensor:
    """The parameters at the start of the last tile's last chunk, ``W_s`` for ``s`` its
    first slot − 1: ``D_s W_b + c_s S_b − Eᵀ(A_{s,:}ᵀ∘K)`` (``S_b = None``: ``c = 0``)."""
    g = tiles.gates
    last = tiles.plan.last_slots[-1]
    start = chunk * (last // chunk) - 1
    if start < 0:
        return W_b.contiguous()
    row = g.A[-1, ..., start, :, None] * tiles.k[-1]  # (B, H, L, Dk): A_{s,:}ᵀ∘K
    W_cs = g.D[-1, ..., start, None, None] * W_b
    if S_b is not None:
        W_cs = W_cs + g.c[-1, ..., start, None, None] * S_b
    return W_cs - E.transpose(-1, -2) @ row


def _solve_rows(tiles: Tiles, chunk: int, a: float, b: float, Q: Tensor, K: Tensor, V: Tensor,
                with_momentum: bool) -> tuple:
    """The state-independent part of :func:`scan_aligned` for all tiles at once:
    ``−A∘(Q Kᵀ)``, ``(I+N)⁻¹``, ``[aD̃∘K | ac̃∘K]`` (``aD̃∘K`` alone without momentum)
    and ``E_V``."""
    g = tiles.gates
    n, BH, L, _ = K.shape
    M = (g.A.reshape(n, BH, L, L) * (Q @ K.transpose(-1, -2))).neg_()  # −A∘(Q Kᵀ)
    if a == 0.0:  # dot: E = b V does not depend on the state
        return M, None, None, V * b
    slot = torch.arange(L, device=Q.device)
    s = chunk * (slot // chunk) - 1  # (L,) gradient point of each slot
    opened = s >= 0
    sc = s.clamp(min=0)
    Ds = torch.where(opened, g.D[..., sc], torch.ones_like(g.D)).reshape(n, BH, L)
    N = g.A[..., sc, :].reshape(n, BH, L, L) * (a * opened.to(Q.dtype))[:, None] \
        * (K @ K.transpose(-1, -2))
    eye = torch.eye(L, dtype=Q.dtype, device=Q.device).expand_as(N)
    Tinv = torch.linalg.solve_triangular(N, eye, upper=False, unitriangular=True)
    if with_momentum:
        cs = torch.where(opened, g.c[..., sc], torch.zeros_like(g.c)).reshape(n, BH, L)
        KD = side_by_side(K, a * Ds, a * cs)  # [a D̃∘K | a c̃∘K]: (n, BH, L, 2Dk)
    else:
        KD = K * (a * Ds)[..., None]  # a D̃∘K: (n, BH, L, Dk)
    return M, Tinv, KD, (Tinv @ V).mul_(b)
