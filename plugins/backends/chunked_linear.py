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
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .tiles import Tiles


def scan_within_chunks(tiles: Tiles, W: Tensor, S: Tensor, Wg: Tensor,
                       psi: Callable[[Tensor, Tensor], Tensor]):
    """Tiles inside chunks, gradients at the chunk start: ``E = ψ(K W_gᵀ, V)``.

    ``W, S, Wg: (B, H, Dv, Dk)`` (``Wg`` is used until a tile opens a chunk).
    Returns ``y (n, B, H, L, Dv)``, the final ``W, S`` and the last chunk start ``W_g``.
    """
    g = tiles.gates
    Q, K, V = tiles.q, tiles.k, tiles.v
    M = g.A * (Q @ K.transpose(-1, -2))  # (n, B, H, L, L)
    QDC = torch.cat([g.D[..., None] * Q, g.c[..., None] * Q], -1)  # (n, B, H, L, 2Dk)
    ys = []
    for t, opens in enumerate(tiles.plan.opens_chunk):
        if opens:
            Wg = W
        E = psi(K[t] @ Wg.transpose(-1, -2), V[t])  # (B, H, L, Dv)
        ys.append(QDC[t] @ torch.cat([W, S], -1).transpose(-1, -2) - M[t] @ E)
        W, S = tiles.advance(t, W, S, E, K[t])
    return torch.stack(ys), W, S, Wg


def scan_aligned(tiles: Tiles, W: Tensor, S: Tensor, chunk: int, a: float, b: float):
    """Chunk-aligned tiles (``L`` a multiple of ``C``), affine ``ψ(p, v) = a p + b v``.

    Token i of a tile takes its gradient at ``W_{s(i)}``, ``s(i) = C⌊i/C⌋ − 1``
    (``W_{−1} = W_b``). Substituting the chunk form of ``W_s`` into ``e_i`` gives a
    unit lower-triangular system independent of ``W_b, S_b``::

        e_i + a Σ_{m≤s(i)} A_{s(i),m} (k_m·k_i) e_m = a (D_{s(i)} W_b + c_{s(i)} S_b) k_i + b v_i
        ⇒ E = K_D W_bᵀ + K_C S_bᵀ + E_V     (solved for all tiles at once)

    so the loop over tiles does two matmuls: ``[E; Y] = Φ [W_b, S_b]ᵀ + Φ₀`` and the
    end state. Returns ``y (n, B, H, L, Dv)``, final ``W, S``, and the parameters
    at the start of the last (possibly unfinished) chunk.
    """
    g = tiles.gates
    Q, K, V = tiles.q, tiles.k, tiles.v
    n, L, Dk, Dv = Q.shape[0], Q.shape[-2], Q.shape[-1], V.shape[-1]
    slot = torch.arange(L, device=Q.device)
    s = chunk * (slot // chunk) - 1  # (L,) gradient point of each slot
    opened = s >= 0
    sc = s.clamp(min=0)
    Ds = torch.where(opened, g.D[..., sc], torch.ones_like(g.D))  # (n, B, H, L)
    cs = torch.where(opened, g.c[..., sc], torch.zeros_like(g.c))
    if a != 0.0:
        As = g.A[..., sc, :] * opened[:, None].to(Q.dtype)  # rows A_{s(i), :}
        N = a * As * (K @ K.transpose(-1, -2))  # strictly lower triangular
        rhs = torch.cat([a * Ds[..., None] * K, a * cs[..., None] * K, b * V], -1)
        X = torch.linalg.solve_triangular(N, rhs, upper=False, unitriangular=True)
        KE, EV = X[..., : 2 * Dk], X[..., 2 * Dk:]  # [K_D | K_C], E_V
    else:
        KE, EV = Q.new_zeros(*Q.shape[:-1], 2 * Dk), b * V
    M = g.A * (Q @ K.transpose(-1, -2))  # (n, B, H, L, L)
    QY = torch.cat([g.D[..., None] * Q, g.c[..., None] * Q], -1) - M @ KE
    Phi = torch.cat([KE, QY], -2)  # (n, B, H, 2L, 2Dk)
    Phi0 = torch.cat([EV, -(M @ EV)], -2)  # (n, B, H, 2L, Dv)
    ys = []
    for t in range(n):
        W_b, S_b = W, S
        EY = Phi[t] @ torch.cat([W, S], -1).transpose(-1, -2) + Phi0[t]  # (B, H, 2L, Dv)
        E = EY[..., :L, :]
        ys.append(EY[..., L:, :])
        W, S = tiles.advance(t, W, S, E, K[t])
    # parameters at the start of the last chunk: W_{s} for s = its first slot − 1
    last = int(tiles.plan.last[-1])
    start = chunk * (last // chunk) - 1
    if start < 0:
        W_cs = W_b
    else:
        row = g.A[-1, ..., start, :, None] * K[-1]  # (B, H, L, Dk): A_{s,:}ᵀ∘K
        W_cs = g.D[-1, ..., start, None, None] * W_b + g.c[-1, ..., start, None, None] * S_b \
            - E.transpose(-1, -2) @ row
    return torch.stack(ys), W, S, W_cs
