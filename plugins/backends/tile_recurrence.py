"""The sequential part of a tile of chunk writes, as one autograd Function with its own
backward pass.

Inside a tile of :func:`~.chunked_levels.scan_chunk_writes` (a two-layer MLP memory
``W2 σ(W1 u)`` (``+ u`` residual), written every ``C`` tokens by gradient descent with
retention, read at chunk starts), chunk ``j``'s errors depend on every earlier chunk's
errors through the kernel form of its start weights. With ``U`` the tile's keys
``(R, Din)``, ``Mw`` the token kernel weights (``Mw[r, i] = γ_{c(r), c(i)} θ_i`` for
tokens ``i`` of earlier chunks, 0 elsewhere) and ``Dr`` the per-row factor
``Π_{j' < c(r)} (1 − α_{j'})``, chunk ``j`` (rows ``r``, earlier rows ``<``) computes::

    z  = Dr∘(U W1ᵀ)_r − ((U Uᵀ)∘Mw)_{r,<} E1_<          h = σ(z)
    p  = Dr∘(h W2ᵀ) − ((h H_<ᵀ)∘Mw_{r,<}) E2_<  (+ U_r)
    e2 = clip(a·p + b·V_r)                              (objective gradient, affine)
    e1 = σ′(z) ∘ (Dr∘(e2 W2) − ((e2 E2_<ᵀ)∘Mw_{r,<}) H_<)

and hands ``H``, ``E1``, ``E2`` (the layer inputs and errors of every token) to the
batched reads and the end of the tile, which autograd differentiates as usual.

Autograd would record some forty nodes per chunk here; this Function runs the loop
without recording and walks it back by hand (reverse mode of the four lines above,
adjoints of earlier chunks pushed into running buffers, every product that does not
feed the recurrence — weight gradients, input gradients, kernel-weight gradients —
formed once per tile after the loop). Tested against the float64 oracle of the
equations, autograd through the plain loop and finite differences
(``tests/plugins/backends/test_tile_recurrence.py``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor


def _activation_backward(name: str, grad_fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """``(g, z) ↦ g ∘ σ′(z)`` in one op where torch has one."""
    if name == "gelu":
        return lambda g, z: torch.ops.aten.gelu_backward(g, z)
    if name == "silu":
        return lambda g, z: torch.ops.aten.silu_backward(g, z)
    return lambda g, z: g * grad_fn(z)


def _second_derivative(spec: dict, z: Tensor) -> Tensor:
    """``σ″(z)`` elementwise: the memory's closed form (``activation_grad2``) where it has
    one, else by differentiating ``σ′`` once (about 7× slower on a CPU)."""
    if spec["act_grad2"] is not None:
        return spec["act_grad2"](z)
    with torch.enable_grad():
        x = z.detach().requires_grad_(True)
        (d2,) = torch.autograd.grad(spec["act_grad"](x).sum(), x)
    return d2


def _clip_scale(delta: Tensor, clip: float | None, norm: Tensor | None = None) -> Tensor | None:
    """``τ / max(‖δ‖, τ)`` per row, ``(…, 1)`` (``norm``: ``‖δ‖ (…)`` where already taken)."""
    if clip is None:
        return None
    norm = delta.norm(dim=-1) if norm is None else norm
    return clip / norm[..., None].clamp_min(clip)


def _unclip(grad: Tensor, e2: Tensor, scale: Tensor | None, clip: float | None) -> Tensor:
    """Backward of ``e2 = δ · τ / max(‖δ‖, τ)``: ``δ̄ = s (ē − [‖δ‖ > τ] (ē·ê) ê)``, where a
    clipped row has ``‖e2‖ = τ``, so ``(ē·ê) ê = (ē·e2) e2 / τ²`` (no norm to take)."""
    if scale is None:
        return grad
    k = (scale < 1).to(grad.dtype) * scale * (grad * e2).sum(-1, keepdim=True) / (clip * clip)
    return (scale * grad).addcmul_(k, e2, value=-1)


class ChunkWriteTile(torch.autograd.Function):
    """``(U, V, W1, W2, Mw, Dr) → (H, E1, E2, ‖δ‖)`` for one tile (see the module).

    Shapes: ``U (N, R, Din)``, ``V (N, R, Dout)``, ``W1 (N, Dh, Din)``, ``W2 (N, Dout,
    Dh)``, ``Mw (N, R, R)``, ``Dr (N, R, 1)`` (``None``: no retention, ``Dr ≡ 1``);
    ``R = chunks · C``. ``spec`` (:func:`tile_spec`) holds the static parts: ``C``, the
    activation, its derivative and name, ``residual``, the objective's affine gradient
    ``(a, b)``, the clip and ``truncate`` (the backward of :func:`_backward_truncated`;
    ``W1, W2, Mw, Dr`` must then be detached). Only ``Mw``'s block-lower part (rows of
    a chunk, columns of earlier chunks) is read. ``‖δ‖`` (the surprise) is not
    differentiable.
    """

    @staticmethod
    def forward(ctx, U: Tensor, V: Tensor, W1: Tensor, W2: Tensor, Mw: Tensor, Dr: Tensor,  # type: ignore[override]
                spec: dict) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        C, act, residual, clip = spec["C"], spec["act"], spec["residual"], spec["clip"]
        a, b = spec["affine"]
        act_bwd = _activation_backward(spec["act_name"], spec["act_grad"])
        N, R, _ = U.shape
        n = R // C
        Mw = Mw * _earlier(R, C, Mw)  # the loop's products run over whole rows of it
        A1 = (U @ U.transpose(1, 2)) * Mw  # (N, R, R): first-layer kernel, block lower
        Zs = U @ W1.transpose(1, 2)  # state part of every first-layer pre-activation
        if Dr is not None:
            Zs = Zs.mul_(Dr)
        W2T = W2.transpose(1, 2)
        # H, E1, E2 start at zero: every product with earlier rows runs over the whole
        # tile, the kernel weights Mw masking out the rows not yet computed
        Z, Bk = torch.empty_like(Zs), torch.empty_like(Zs)
        H, E1 = torch.zeros_like(Zs), torch.zeros_like(Zs)
        E2 = V.new_zeros(N, R, W2.shape[1])
        S2, S3 = torch.empty_like(Mw), torch.empty_like(Mw)  # h Hᵀ, e2 E2ᵀ (backward)
        HT, E2T = H.transpose(1, 2), E2.transpose(1, 2)
        scales = [] if clip is not None else None
        chunk_norms = []  # ‖δ‖ per chunk, taken once for the clip (clipped tiles only)
        # per-chunk views, one op per buffer (slicing inside the loop costs more than its math)
        Uc, Vc, Dc, Zsc, Zc, Hc, E1c, E2c, Bc, A1c, Mc, S2c, S3c = (
            _chunks(x, n) for x in (U, V, Dr, Zs, Z, H, E1, E2, Bk, A1, Mw, S2, S3))
        for j in range(n):
            d = Dc[j]
            z = torch.baddbmm(Zsc[j], A1c[j], E1, alpha=-1, out=Zc[j]) if j else Zc[j].copy_(Zsc[j])
            h = Hc[j].copy_(act(z))
            p = torch.bmm(h, W2T)
            if d is not None:
                p = p.mul_(d)
            if j:
                p = p.baddbmm_(torch.bmm(h, HT, out=S2c[j]) * Mc[j], E2, alpha=-1)
            if residual:
                p = p.add_(Uc[j])
            delta = p.add_(Vc[j], alpha=b) if a == 1.0 else p.mul_(a).add_(Vc[j], alpha=b)
            if scales is not None:
                chunk_norms.append(delta.norm(dim=-1))
                scale = _clip_scale(delta, clip, chunk_norms[-1])
                scales.append(scale)
                delta = delta.mul_(scale)
            e2 = E2c[j].copy_(delta)
            bk = torch.bmm(e2, W2)
            if d is not None:
                bk = bk.mul_(d)
            if j:
                bk = bk.baddbmm_(torch.bmm(e2, E2T, out=S3c[j]) * Mc[j], H, alpha=-1)
            Bc[j].copy_(bk)
            E1c[j].copy_(act_bwd(bk, z))
        ctx.spec = spec
        ctx.scales = torch.cat(scales, 1) if scales else None
        norms = torch.cat(chunk_norms, 1) if scales else E2.norm(dim=-1)  # ‖δ‖ (E2 = δ unclipped)
        ctx.save_for_backward(U, W1, W2, Mw, Dr, A1, Z, H, E1, E2, Bk, S2, S3)
        ctx.mark_non_differentiable(norms)
        ctx.set_materialize_grads(False)
        return H, E1, E2, norms

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gH: Tensor | None, gE1: Tensor | None, gE2: Tensor | None,  # type: ignore[override]
                 _gn: Tensor | None):
        if ctx.spec["truncate"]:
            return _backward_truncated(ctx, gH, gE1, gE2)
        U, W1, W2, Mw, Dr, A1, Z, H, E1, E2, Bk, S2, S3 = ctx.saved_tensors
        spec = ctx.spec
        C, residual, clip = spec["C"], spec["residual"], spec["clip"]
        a, b = spec["affine"]
        act_bwd = _activation_backward(spec["act_name"], spec["act_grad"])
        R = U.shape[1]
        n = R // C
        accH = gH.clone() if gH is not None else torch.zeros_like(H)
        accE1 = gE1.clone() if gE1 is not None else torch.zeros_like(E1)
        accE2 = gE2.clone() if gE2 is not None else torch.zeros_like(E2)
        d2 = _second_derivative(spec, Z)
        need_mw = ctx.needs_input_grad[4]
        Zb, Bb = torch.empty_like(Z), torch.empty_like(Z)  # Z̄ and B̄k of every row
        Db = torch.empty_like(E2)  # δ̄ of every row
        Mb = torch.zeros_like(Mw) if need_mw else None
        scales = ctx.scales
        W2T = W2.transpose(1, 2)
        Dc, Zc, Hc, E2c, Bc, d2c, A1c, Mc, S2c, S3c, aHc, aE1c, aE2c, Zbc, Bbc, Dbc = (
            _chunks(x, n) for x in (Dr, Z, H, E2, Bk, d2, A1, Mw, S2, S3, accH, accE1, accE2,
                                    Zb, Bb, Db))
        Mbc = _chunks(Mb, n)
        scc = _chunks(scales, n)
        HT, E2T = H.transpose(1, 2), E2.transpose(1, 2)
        for j in reversed(range(n)):
            d, z = Dc[j], Zc[j]
            ge1 = aE1c[j]
            bkb = act_bwd(ge1, z)  # B̄k = ē1 ∘ σ′(z)
            Bbc[j].copy_(bkb)
            zb = torch.mul(ge1, Bc[j], out=Zbc[j]).mul_(d2c[j])  # through σ′(z)
            ge2 = aE2c[j].baddbmm_(bkb if d is None else d * bkb, W2T)
            if j:  # earlier rows, over the whole tile (Mw is 0 on the others)
                m, s3, s2 = Mc[j], S3c[j], S2c[j]
                mb3 = torch.bmm(bkb, HT)  # −M̄3
                accH.baddbmm_((s3 * m).transpose(1, 2), bkb, alpha=-1)
                sb3 = mb3 * m
                if need_mw:
                    Mbc[j].addcmul_(mb3, s3, value=-1)
                ge2.baddbmm_(sb3, E2, alpha=-1)
                accE2.baddbmm_(sb3.transpose(1, 2), E2c[j], alpha=-1)
            delta_b = Dbc[j].copy_(_unclip(ge2, E2c[j], scc[j], clip))
            pb = delta_b if a == 1.0 else a * delta_b
            gh = aHc[j].baddbmm_(pb if d is None else d * pb, W2)
            if j:
                mb2 = torch.bmm(pb, E2T)  # −M̄2
                accE2.baddbmm_((s2 * m).transpose(1, 2), pb, alpha=-1)
                sb2 = mb2 * m
                if need_mw:
                    Mbc[j].addcmul_(mb2, s2, value=-1)
                gh.baddbmm_(sb2, H, alpha=-1)
                accH.baddbmm_(sb2.transpose(1, 2), Hc[j], alpha=-1)
            zb.add_(act_bwd(gh, z))
            if j:
                accE1.baddbmm_(A1c[j].transpose(1, 2), zb, alpha=-1)
        # every product that does not feed the recurrence, once per tile
        Pb = Db if a == 1.0 else a * Db
        dZb, dPb, dBb = (x if Dr is None else Dr * x for x in (Zb, Pb, Bb))
        gU = gV = gW1 = gW2 = gMw = gDr = None
        A1b = -(Zb @ E1.transpose(1, 2))  # Ā1 (only its block-lower part is used)
        if ctx.needs_input_grad[0]:
            G1 = A1b * Mw  # ∂/∂(U Uᵀ)
            gU = dZb @ W1 + G1 @ U + G1.transpose(1, 2) @ U
            if residual:
                gU = gU + Pb
        if ctx.needs_input_grad[1]:
            gV = Db if b == 1.0 else b * Db
        if ctx.needs_input_grad[2]:
            gW1 = dZb.transpose(1, 2) @ U
        if ctx.needs_input_grad[3]:
            gW2 = dPb.transpose(1, 2) @ H + E2.transpose(1, 2) @ dBb
        if need_mw:
            gMw = (Mb + A1b * (U @ U.transpose(1, 2))) * _earlier(R, C, Mw)
        if Dr is not None and ctx.needs_input_grad[5]:
            gDr = (Zb * (U @ W1.transpose(1, 2))).sum(-1, keepdim=True) \
                + (Pb * (H @ W2.transpose(1, 2))).sum(-1, keepdim=True) \
                + (Bb * (E2 @ W2)).sum(-1, keepdim=True)
        return gU, gV, gW1, gW2, gMw, gDr, None


def _backward_truncated(ctx, gH: Tensor | None, gE1: Tensor | None, gE2: Tensor | None):
    """Backward of a truncated tile (``inner_grad = "truncated"``): every chunk's errors
    are computed at its detached start weights, so the outer gradient reaches a chunk's
    ``H, E1, E2`` only through its own keys ``U_r`` and targets ``V_r`` — the four lines
    of the module with ``W1, W2, Mw, Dr`` and the earlier rows ``U_<, H_<, E1_<, E2_<``
    held constant. No chunk depends on another, so the whole tile is one batched pass."""
    U, W1, W2, Mw, Dr, A1, Z, H, E1, E2, Bk, S2, S3 = ctx.saved_tensors
    spec = ctx.spec
    residual, clip = spec["residual"], spec["clip"]
    a, b = spec["affine"]
    act_bwd = _activation_backward(spec["act_name"], spec["act_grad"])
    gE1 = torch.zeros_like(E1) if gE1 is None else gE1
    gH = torch.zeros_like(H) if gH is None else gH
    gE2 = torch.zeros_like(E2) if gE2 is None else gE2
    scale = (lambda x: x) if Dr is None else (lambda x: Dr * x)  # noqa: E731
    Bb = act_bwd(gE1, Z)  # B̄k
    Zb = gE1 * Bk * _second_derivative(spec, Z)
    ge2 = gE2 + scale(Bb) @ W2.transpose(1, 2) - ((Bb @ H.transpose(1, 2)) * Mw) @ E2
    Db = _unclip(ge2, E2, ctx.scales, clip)
    Pb = Db if a == 1.0 else a * Db
    gh = gH + scale(Pb) @ W2 - ((Pb @ E2.transpose(1, 2)) * Mw) @ H
    Zb = Zb + act_bwd(gh, Z)
    gU = gV = None
    if ctx.needs_input_grad[0]:
        gU = scale(Zb) @ W1 - ((Zb @ E1.transpose(1, 2)) * Mw) @ U
        if residual:
            gU = gU + Pb
    if ctx.needs_input_grad[1]:
        gV = Db if b == 1.0 else b * Db
    return gU, gV, None, None, None, None, None


def _earlier(R: int, C: int, like: Tensor) -> Tensor:
    """``(R, R)``: 1 where the column's chunk precedes the row's (the entries a tile reads)."""
    chunk = torch.arange(R, device=like.device) // C
    return (chunk[:, None] > chunk[None, :]).to(like.dtype)


def _chunks(x: Tensor | None, n: int) -> tuple:
    """``(N, R, …)`` as its ``n`` chunk views ``(N, R/n, …)`` (``None``s for ``None``)."""
    if x is None:
        return (None,) * n
    return x.unflatten(1, (n, -1)).unbind(1)


def tile_spec(memory: Any, objective: Any, chunk: int, clip: float | None,
              truncate: bool = False) -> dict[str, Any]:
    """The static part of a :class:`ChunkWriteTile` call."""
    return {"C": chunk, "truncate": truncate, **mlp_spec(memory, objective, clip)}


def mlp_spec(memory: Any, objective: Any, clip: float | None) -> dict[str, Any]:
    """What a hand-differentiated tile needs of an MLP memory and an affine objective:
    the activation, its first and (where the memory has it) second derivative and its
    name, ``residual``, the objective's affine gradient ``(a, b)`` and the clip."""
    return {"act": memory.activation, "act_grad": memory.activation_grad,
            "act_grad2": getattr(memory, "activation_grad2", None),
            "act_name": getattr(memory, "activation_name", ""),
            "residual": memory.structure == "residual-mlp",
            "affine": tuple(float(x) for x in objective.affine_grad), "clip": clip}
