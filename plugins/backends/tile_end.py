"""The end of a tile of momentum writes, one weight matrix at a time, as one autograd
Function with its own backward pass.

A tile of :func:`~.chunked_levels.scan_chunk_writes` or
:func:`~.chunked_levels.scan_token_writes` starts from ``(W_b, S_b)`` and ends at::

    W_L = D W_b + c S_b + Eᵀ(a∘X),   S_L = P S_b + Eᵀ(b∘X)

(``D, c, P`` one scalar per batch element and head, ``a, b`` one per token row: the
gates' last rows, signs folded in; tiles.py). Autograd would differentiate the scalar
products through a parameter-sized product ``∂W_L ∘ W_b`` and its sum, on top of the
gradients themselves; this backward pass forms only ``∂W_b = D ∂W_L`` and ``∂S_b = c ∂W_L +
P ∂S_L``, reads ``∂D = ⟨∂W_L, W_b⟩`` and the like as dot products, and the low-rank
part as matmuls::

    ∂E = (a∘X) ∂W_Lᵀ + (b∘X) ∂S_Lᵀ,   ∂X = a∘(E ∂W_L) + b∘(E ∂S_L),   ∂a = Σ X∘(E ∂W_L)

Tested against autograd of the same formula (``tests/plugins/backends/test_tile_end.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from nlframe import buffers

from .dgd_tile import _dot


class TileEnd(torch.autograd.Function):
    """``(W, S, E, X, D, c, P, a, b) → (W_L, S_L)`` (see the module) over leading dims
    ``(B, H)``: ``W, S (B, H, O, I)``, ``E (B, H, R, O)``, ``X (B, H, R, I)``, ``D, c, P
    (B, H)``, ``a, b (B, H, R)``. ``c = None`` leaves out ``c S_b`` and ``P = None`` leaves
    out ``P S_b`` (no momentum: both are 0; ``S`` may then be ``None``); ``b = None`` forms
    no ``S_L`` (returned as ``None``)."""

    @staticmethod
    def forward(ctx, W: Tensor, S: Tensor | None, E: Tensor, X: Tensor, D: Tensor,  # type: ignore[override]
                c: Tensor | None, P: Tensor | None, a: Tensor, b: Tensor | None) -> tuple:
        ctx.save_for_backward(W, S, E, X, D, c, P, a, b)
        ctx.set_materialize_grads(False)
        return _end(W, S, E, X, D, c, P, a, b)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gW: Tensor | None, gS: Tensor | None):  # type: ignore[override]
        W, S, E, X, D, c, P, a, b = ctx.saved_tensors
        # the next tile's products often hand the gradients over transposed: one copy into
        # the weights' layout, where every dot product below would copy again
        gW, gS = (None if g is None else g.contiguous() for g in (gW, gS))
        need = ctx.needs_input_grad
        lead = W.shape[:-2]
        grads: list[Tensor | None] = [None] * 9

        def dot(g: Tensor, m: Tensor) -> Tensor:  # ⟨g, m⟩ per leading index
            return _dot(g.reshape(-1, *g.shape[-2:]), m.reshape(-1, *m.shape[-2:])).view(lead)

        def scaled(g: Tensor, s: Tensor) -> Tensor:
            return g * s[..., None, None]

        if gW is not None:
            if need[0]:
                grads[0] = scaled(gW, D)
            if need[4]:
                grads[4] = dot(gW, W)
        if c is not None and gW is not None:
            if need[1]:
                grads[1] = scaled(gW, c)
            if need[5]:
                grads[5] = dot(gW, S)
        if P is not None and gS is not None:
            if need[1]:
                grads[1] = scaled(gS, P) if grads[1] is None \
                    else grads[1].addcmul_(gS, P[..., None, None])
            if need[6]:
                grads[6] = dot(gS, S)
        # the low-rank parts Eᵀ(a∘X) and Eᵀ(b∘X)
        pairs = [(g, w, slot) for g, w, slot in ((gW, a, 7), (gS, b, 8)) if g is not None]
        gE = gX = None
        for g, w, slot in pairs:
            if need[2]:
                term = (X * w[..., None]) @ g.transpose(-1, -2)
                gE = term if gE is None else gE.add_(term)
            if need[3] or need[slot]:
                eg = E @ g  # (B, H, R, I)
                if need[3]:
                    gX = eg * w[..., None] if gX is None else gX.addcmul_(eg, w[..., None])
                if need[slot]:
                    grads[slot] = (eg * X).sum(-1)
        grads[2], grads[3] = gE, gX
        return tuple(grads)


def _end(W: Tensor, S: Tensor | None, E: Tensor, X: Tensor, D: Tensor, c: Tensor | None,
         P: Tensor | None, a: Tensor, b: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """The formula of the module, one parameter-sized buffer per result (reused where free,
    :mod:`nlframe.buffers`)."""
    ET = E.transpose(-1, -2)
    shape = (*torch.broadcast_shapes(E.shape[:-2], X.shape[:-2]), E.shape[-1], X.shape[-1])
    newW = torch.matmul(ET, X * a[..., None], out=buffers.empty(shape, W))
    newW.addcmul_(D[..., None, None], W)
    if c is not None:
        newW.addcmul_(c[..., None, None], S)
    newS = None
    if b is not None:
        newS = torch.matmul(ET, X * b[..., None], out=buffers.empty(shape, W))
        if P is not None:
            newS.addcmul_(P[..., None, None], S)
    return newW, newS


def tile_end(W: dict, S: dict | None, E: dict, X: dict, D: Tensor, c: Tensor | None,
             P: Tensor | None, a: Tensor, b: Tensor | None) -> tuple[dict, dict | None]:
    """:class:`TileEnd` for every weight matrix of a memory: the new ``W`` and the new
    ``S`` (``b = None``: ``S`` is not formed, the given one is returned). Under
    ``torch.compile`` (the ``compiled`` backend) the formula itself, which the compiler
    differentiates."""
    run = _end if torch.compiler.is_compiling() else TileEnd.apply
    newW, newS = {}, (dict(S) if S is not None else None)
    for name in W:
        w, s = run(W[name], None if S is None else S[name], E[name], X[name], D, c, P, a, b)
        newW[name] = w
        if s is not None:
            newS[name] = s
    return newW, newS
