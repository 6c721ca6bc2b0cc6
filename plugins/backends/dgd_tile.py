"""One tile of token writes with DGD, as one autograd Function with its own backward pass.

A tile that opens a chunk of a two-layer MLP memory ``W2 σ(W1 u)`` (``+ u`` residual)
written token by token with DGD (NL eqs. 88, 93) and read at the chunk start —
the self-modifying Titans' memories (``read="chunk_start", write="token",
optimizer="dgd"``) — starts from ``W_b = W_c``, so every token's error is taken at
``W_b``. With keys ``K (L, Din)``, targets ``T̂ = M_{W_b}(V)`` (self targets) or ``V``
and the tile gates ``A, D`` of tiles.py (``η = 0``)::

    z = K W1ᵀ,  h = σ(z),  p = h W2ᵀ (+ K),  e2 = clip(a·p + b·T̂),  e1 = σ′(z) ∘ (e2 W2)
    per layer (X, E) = (K, e1), (h, e2):
        (I + N) R = D̃∘(X W_bᵀ) + E,   N_{im} = A_{i−1,m} (x_m·x_i),   D̃_i = D_{i−1}
        W_L = D_L W_b − Rᵀ(A_{L,:}ᵀ∘X)
    y = M_{W_b}(Q),   y′ = M_{W_L}(Q′)               (reads at both ends, optional)

(chunked_levels.py's module docstring derives the UT form.) Autograd would record
some sixty nodes per tile and form one parameter-sized outer product per weight use;
the backward pass here keeps one dense gradient per weight matrix,
``∂W_b = D_L ∂W_L + Σ aᵀb``, with every low-rank pair of the tile stacked into one
matmul. Tested against the float64 oracle of the equations, autograd through the plain
tile and finite differences (``tests/plugins/backends/test_dgd_tile.py``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nlframe import buffers

from .tile_recurrence import (_activation_backward, _clip_scale, _second_derivative, _unclip,
                              mlp_spec)


class DGDWriteTile(torch.autograd.Function):
    """``(K, V, Q, Q′, W1, W2, A, D) → (W1_L, W2_L, y, y′, ‖δ‖)`` for one tile (see the
    module): ``y`` reads ``Q`` at the tile's start weights, ``y′`` reads ``Q′`` at its
    end weights (the next chunk's start, when the tile closes a chunk).

    Shapes, over any leading dims ``…`` (batch, heads): ``K (…, L, Din)``, ``V (…, L,
    Dv)``, ``Q (…, Lq, Din)`` and ``Q′ (…, Lq′, Din)`` or ``None`` (then ``y``, ``y′`` are
    ``None``), ``W1 (…, Dh, Din)``,
    ``W2 (…, Dout, Dh)``, ``A (…, L, L)``, ``D (…, L)``; padded slots carry ``θ = α =
    0``, so the tile's last row is its end. The new weights and the weight gradients are
    fresh tensors of their own (never views), so autograd adds the other gradients of a
    weight into them in place.
    ``spec`` (:func:`dgd_spec`) holds the activation, ``residual``, the objective's
    affine gradient ``(a, b)``, the clip and ``self_target``. ``‖δ‖`` (the surprise,
    before the clip) is not differentiable.
    """

    @staticmethod
    def forward(ctx, K: Tensor, V: Tensor, Q: Tensor | None, Qn: Tensor | None,  # type: ignore[override]
                W1: Tensor, W2: Tensor, A: Tensor, D: Tensor, spec: dict) -> tuple:
        act, residual = spec["act"], spec["residual"]
        a, b = spec["affine"]
        act_bwd = _activation_backward(spec["act_name"], spec["act_grad"])
        lead = K.shape[:-2]
        K, V, Q, Qn, W1, W2, A, D = (_flat(x, lead) for x in (K, V, Q, Qn, W1, W2, A, D))
        L = K.shape[1]
        W1T, W2T = W1.transpose(1, 2), W2.transpose(1, 2)
        st = spec["self_target"]
        # keys and (self targets) values through the memory at W_b, one product per layer
        Z = torch.cat([K, V], 1) @ W1T if st else K @ W1T
        Hs = act(Z)
        Ps = Hs @ W2T  # [h W2ᵀ; ĥ W2ᵀ]: also the DGD state parts X W_bᵀ of both layers
        z, h, p = Z[:, :L], Hs[:, :L], Ps[:, :L]
        zv, hv = (Z[:, L:], Hs[:, L:]) if st else (None, None)
        if st:
            target = Ps[:, L:] + V if residual else Ps[:, L:]
        else:
            target = V
        pred = p + K if residual else p
        delta = pred.mul(a).add_(target, alpha=b) if a != 1.0 else pred.add(target, alpha=b)
        norms = delta.norm(dim=-1)
        scale = _clip_scale(delta, spec["clip"], norms)
        e2 = delta if scale is None else delta * scale
        t = e2 @ W2
        e1 = act_bwd(t, z)
        A_prev = F.pad(A, (0, 0, 1, 0))[:, :L]  # row i holds A_{i−1,:}
        D_prev = F.pad(D, (1, 0), value=1.0)[:, :L]  # D̃_i = D_{i−1}
        aL, DL = A[:, L - 1], D[:, L - 1, None, None]
        eye = torch.eye(L, dtype=K.dtype, device=K.device).expand_as(A)
        new, layers = [], []
        for X, E, W, P in ((K, e1, W1, z), (h, e2, W2, p)):
            gram = X @ X.transpose(1, 2)
            # the L×L inverse, then one matmul (batched triangular solves against a wide
            # right-hand side are far slower on CPU)
            Minv = torch.linalg.solve_triangular(A_prev * gram + eye, eye, upper=False,
                                                 unitriangular=True)
            R = Minv @ P.mul(D_prev[..., None]).add_(E)
            out = buffers.empty((*lead, *W.shape[1:]), W)
            torch.mul(W, DL, out=_flat(out, lead)).baddbmm_(R.transpose(1, 2), X * aL[..., None],
                                                          alpha=-1)
            new.append(out)
            layers += [gram, Minv, P, R]
        y, zq, hq = _read(act, residual, Q, W1, W2)
        W1n, W2n = (_flat(w, lead) for w in new)
        yn, zqn, hqn = _read(act, residual, Qn, W1n, W2n)
        ctx.spec, ctx.scale, ctx.lead = spec, scale, lead
        ctx.save_for_backward(K, V, Q, W1, W2, A, D, z, h, e2, t, zv, hv, zq, hq,
                              Qn, zqn, hqn, *new, *layers)
        ctx.mark_non_differentiable(norms)
        ctx.set_materialize_grads(False)
        y, yn = (None if r is None else r.view(*lead, *r.shape[1:]) for r in (y, yn))
        return new[0], new[1], y, yn, norms.view(*lead, L)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gW1n: Tensor | None, gW2n: Tensor | None, gy: Tensor | None,  # type: ignore[override]
                 gyn: Tensor | None, _gn: Tensor | None):
        (K, V, Q, W1, W2, A, D, z, h, e2, t, zv, hv, zq, hq, Qn, zqn, hqn, W1n, W2n,
         *layers) = ctx.saved_tensors
        lead = ctx.lead
        gW1n, gW2n, gy, gyn, W1n, W2n = (_flat(x, lead) for x in (gW1n, gW2n, gy, gyn, W1n, W2n))
        spec = ctx.spec
        residual = spec["residual"]
        a, b = spec["affine"]
        act_bwd = _activation_backward(spec["act_name"], spec["act_grad"])
        L = K.shape[1]
        A_prev = F.pad(A, (0, 0, 1, 0))[:, :L]
        D_prev = F.pad(D, (1, 0), value=1.0)[:, :L]
        aL, DL = A[:, L - 1], D[:, L - 1]
        lower = torch.ones(L, L, dtype=torch.bool, device=K.device).tril(-1)
        gA_prev, gD_prev = torch.zeros_like(A), torch.zeros_like(D)
        gaL, gDL = torch.zeros_like(aL), torch.zeros_like(DL)
        gX = [torch.zeros_like(K), torch.zeros_like(h)]  # ∂ of the layer inputs K, h
        gE = [torch.zeros_like(h), torch.zeros_like(e2)]  # ∂e1, ∂e2
        gP = [None, None]  # ∂(X W_bᵀ) per layer
        # the end read y′ = M_{W_L}(Q′) adds low-rank pairs lᵀr to ∂W_L, kept as pairs
        end: list[tuple[Tensor, Tensor] | None] = [None, None]
        gQn = None
        if gyn is not None and Qn is not None:
            gzn = act_bwd(gyn @ W2n, zqn)
            end = [(gzn, Qn), (gyn, hqn)]
            gQn = gzn @ W1n
            if residual:
                gQn = gQn + gyn
        for i, (X, W, gWn) in enumerate(((K, W1, gW1n), (h, W2, gW2n))):
            if gWn is None and end[i] is None:
                continue
            gram, Minv, P, R = layers[4 * i:4 * i + 4]
            Y = X * aL[..., None]  # W_L = D_L W_b − Rᵀ Y
            gY, gR = torch.zeros_like(X), torch.zeros_like(R)
            if gWn is not None:
                gDL += _dot(gWn, W)
                gY.baddbmm_(R, gWn, alpha=-1)
                gR.baddbmm_(Y, gWn.transpose(1, 2), alpha=-1)
            if end[i] is not None:  # the same products with lᵀr, through the rank of Q′
                el, er = end[i]
                gDL += ((er @ W.transpose(1, 2)) * el).sum((1, 2))
                gY.baddbmm_(R @ el.transpose(1, 2), er, alpha=-1)
                gR.baddbmm_(Y @ er.transpose(1, 2), el, alpha=-1)
            gaL += (gY * X).sum(-1)
            gX[i].addcmul_(aL[..., None], gY)
            g_rhs = Minv.transpose(1, 2) @ gR  # R = (I + N)⁻¹ (D̃∘P + E)
            gN = (g_rhs @ R.transpose(1, 2)).neg_().mul_(lower)
            gA_prev += gN * gram
            gG = gN * A_prev
            gX[i] += (gG + gG.transpose(1, 2)) @ X
            gE[i] += g_rhs
            gD_prev += (g_rhs * P).sum(-1)
            gP[i] = g_rhs * D_prev[..., None]
        gK, gh = gX
        # e1 = σ′(z) ∘ t,  t = e2 W2;  e2 = clip(a·pred + b·target)
        gt = act_bwd(gE[0], z)
        gz = gE[0] * t * _second_derivative(spec, z)
        ge2 = gE[1].baddbmm_(gt, W2.transpose(1, 2))
        gdelta = _unclip(ge2, e2, ctx.scale, spec["clip"])
        gp = gdelta if a == 1.0 else a * gdelta
        gtarget = gdelta if b == 1.0 else b * gdelta
        if residual:
            gK += gp
        gp_all = gp if gP[1] is None else gp + gP[1]  # ∂(h W2ᵀ)
        # pairs (l, r) of ∂W += lᵀ r, and the products through W2 then W1, stacked
        left2, right2 = [e2, gp_all], [gt, h]
        left1, right1 = [], []
        st = spec["self_target"]
        g_out = torch.cat([gp_all, gtarget], 1) if st else gp_all
        g_hid = g_out @ W2  # [∂h; ∂ĥ] from the second layer
        gh += g_hid[:, :L]
        gz += act_bwd(gh, z)
        gz_all = gz if gP[0] is None else gz + gP[0]  # ∂(K W1ᵀ)
        left1.append(gz_all)
        right1.append(K)
        if st:
            left2.append(gtarget)
            right2.append(hv)
            gzv = act_bwd(g_hid[:, L:], zv)
            left1.append(gzv)
            right1.append(V)
            g_in = torch.cat([gz_all, gzv], 1) @ W1
            gK += g_in[:, :L]
            gV = g_in[:, L:] + gtarget if residual else g_in[:, L:]
        else:
            gK.baddbmm_(gz_all, W1)
            gV = gtarget
        gQ = None
        if gy is not None and Q is not None:
            left2.append(gy)
            right2.append(hq)
            gzq = act_bwd(gy @ W2, zq)
            left1.append(gzq)
            right1.append(Q)
            gQ = gzq @ W1
            if residual:
                gQ = gQ + gy
        gW = []  # (truncated writes start from detached weights: no ∂W_b is asked for)
        for i, (gWn, left, right) in enumerate(((gW1n, left1, right1), (gW2n, left2, right2))):
            if not ctx.needs_input_grad[4 + i]:
                gW.append(None)
                continue
            if end[i] is not None:  # D_L (lᵀr): the end read's part of D_L ∂W_L
                left.append(end[i][0] * DL[:, None, None])
                right.append(end[i][1])
            out = buffers.empty((*lead, left[0].shape[2], right[0].shape[2]), K)
            _sum_of_products(left, right, _flat(out, lead),
                             None if gWn is None else (gWn, DL[:, None, None]))
            gW.append(out)
        # A_prev and D_prev are A and D shifted down a row; the end row is row L − 1
        gA = F.pad(gA_prev[:, 1:], (0, 0, 0, 1))
        gA[:, L - 1] += gaL
        gD = F.pad(gD_prev[:, 1:], (0, 1))
        gD[:, L - 1] += gDL
        gK, gV, gQ, gQn, gA, gD = (None if x is None else x.view(*lead, *x.shape[1:])
                                   for x in (gK, gV, gQ, gQn, gA, gD))
        return gK, gV, gQ, gQn, gW[0], gW[1], gA, gD, None


def _sum_of_products(left: list[Tensor], right: list[Tensor], out: Tensor,
                     scaled: tuple[Tensor, Tensor] | None) -> None:
    """``out = Σ_p l_pᵀ r_p (+ g·s)`` for pairs ``l_p (N, n_p, R)``, ``r_p (N, n_p, C)``
    and ``scaled = (g (N, R, C), s)``. Either one matmul of the stacked rows (a copy of
    every row) or one accumulating matmul per pair (a pass over ``out`` each), whichever
    moves less memory: the CPU paths here are bound by it, not by the FLOPs."""
    rows = sum(x.shape[1] for x in left)
    R, C = out.shape[1], out.shape[2]
    passes = len(left) - (scaled is None)
    if passes * R * C <= rows * (R + C):
        pairs = list(zip(left, right))
        if scaled is None:
            x, y = pairs.pop(0)
            torch.bmm(x.transpose(1, 2), y, out=out)
        else:
            torch.mul(*scaled, out=out)
        for x, y in pairs:
            out.baddbmm_(x.transpose(1, 2), y)
        return
    # the rows stacked, then read transposed (a concatenation of transposes is a
    # strided copy, slower than the matmul's transposed read)
    torch.bmm(torch.cat(left, 1).transpose(1, 2), torch.cat(right, 1), out=out)
    if scaled is not None:
        out.addcmul_(*scaled)


def _read(act, residual: bool, Q: Tensor | None, W1: Tensor, W2: Tensor) -> tuple:
    """``M_W(Q) = W2 σ(W1 Q) (+ Q)`` with its pre-activation and hidden rows (``None``s
    for ``Q = None``)."""
    if Q is None:
        return None, None, None
    z = Q @ W1.transpose(1, 2)
    h = act(z)
    y = h @ W2.transpose(1, 2)
    return (y + Q if residual else y), z, h


def _flat(x: Tensor | None, lead: torch.Size) -> Tensor | None:
    """``x (*lead, …)`` as ``(N, …)`` (a view where the layout allows)."""
    return None if x is None else x.reshape(-1, *x.shape[len(lead):])


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """``⟨a_n, b_n⟩`` per leading index of two ``(N, R, C)`` tensors. For a few large
    matrices, one BLAS dot each: ``vecdot`` writes an ``a``-sized product first, and a
    fresh parameter-sized buffer costs more than the sum on a CPU."""
    a, b = a.flatten(1), b.flatten(1)
    if a.shape[0] > 16:
        return torch.linalg.vecdot(a, b)
    return torch.stack([torch.dot(x, y) for x, y in zip(a, b)])


def dgd_spec(memory: Any, objective: Any, clip: float | None, self_target: bool) -> dict:
    """The static part of a :class:`DGDWriteTile` call."""
    return {**mlp_spec(memory, objective, clip), "self_target": self_target}
