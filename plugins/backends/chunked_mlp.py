"""Chunk-parallel scan of a two-layer MLP memory with the momentum rule.

TTT mini-batch dual form (TTT arXiv 2407.04620, mini-batch TTT; Titans arXiv
2501.00663, parallel training), extended with momentum and decay. Every
gradient of a chunk is taken at the chunk-start parameters ``(W1_g, W2_g)``::

    z_i = W1_g k_i,  a_i = σ(z_i),  pred_i = W2_g a_i (+ k_i for residual-mlp)
    δ2_i = ∂ℓ/∂pred_i,  δ1_i = (W2_gᵀ δ2_i) ∘ σ′(z_i)
    g1_i = δ1_i k_iᵀ,  g2_i = δ2_i a_iᵀ          (never materialised)

and the read after write of token j inside a tile starting from ``(W_b, S_b)``
uses the chunk form of tiles.py layer by layer::

    W1_j q_j = D_j W1_b q_j + c_j S1_b q_j − Σ_i A_{ji} (k_i·q_j) δ1_i,   h_j = σ(W1_j q_j)
    W2_j h_j = D_j W2_b h_j + c_j S2_b h_j − Σ_i A_{ji} (a_i·h_j) δ2_i   (+ q_j)
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from nlframe.interfaces import Params

from .tiles import Tiles


def _cat_t(X: Tensor, Y: Tensor) -> Tensor:
    """``[X, Y]ᵀ``: two ``(..., R, C)`` blocks side by side, transposed → ``(..., 2C, R)``."""
    return torch.cat([X, Y], -1).transpose(-1, -2)


def scan_within_chunks(tiles: Tiles, params: Params, mom: Params, grad_point: Params,
                       activation: Callable[[Tensor], Tensor],
                       activation_grad: Callable[[Tensor], Tensor],
                       psi: Callable[[Tensor, Tensor], Tensor], residual: bool):
    """Tiles inside chunks (tiles.py ``TilePlan.within_chunks``).

    ``params, mom, grad_point``: ``{"W1": (B, H, Dh, Dk), "W2": (B, H, Dv, Dh)}``
    (``grad_point`` is used until a tile opens a chunk). Returns ``y (n, B, H, L, Dv)``,
    the final params and momentum, the last chunk-start params and ``‖δ2_i‖ (n, B, H, L)``.
    """
    g = tiles.gates
    Q, K, V = tiles.q, tiles.k, tiles.v
    W1, W2, S1, S2 = params["W1"], params["W2"], mom["W1"], mom["W2"]
    G1, G2 = grad_point["W1"], grad_point["W2"]
    M = g.A * (Q @ K.transpose(-1, -2))  # (n, B, H, L, L)
    ys, norms = [], []
    for t, opens in enumerate(tiles.plan.opens_chunk):
        if opens:
            G1, G2 = W1, W2
        D, c, A = g.D[t][..., None], g.c[t][..., None], g.A[t]  # (B, H, L, 1), (B, H, L, L)
        # forward and backward at the gradient point, all tokens of the tile at once
        z = K[t] @ G1.transpose(-1, -2)  # (B, H, L, Dh)
        act = activation(z)
        pred = act @ G2.transpose(-1, -2)  # (B, H, L, Dv)
        if residual:
            pred = pred + K[t]
        d2 = psi(pred, V[t])  # (B, H, L, Dv)
        norms.append(d2.norm(dim=-1))
        d1 = (d2 @ G2) * activation_grad(z)  # (B, H, L, Dh)
        # read after write, layer by layer
        h = activation(tiles.qdc[t] @ _cat_t(W1, S1) - M[t] @ d1)  # (B, H, L, Dh)
        y = torch.cat([D * h, c * h], -1) @ _cat_t(W2, S2) \
            - (A * (h @ act.transpose(-1, -2))) @ d2  # (B, H, L, Dv)
        ys.append(y + Q[t] if residual else y)
        W1, S1 = tiles.advance(t, W1, S1, d1, K[t])
        W2, S2 = tiles.advance(t, W2, S2, d2, act)
    return (torch.stack(ys), {"W1": W1, "W2": W2}, {"W1": S1, "W2": S2},
            {"W1": G1, "W2": G2}, torch.stack(norms))
