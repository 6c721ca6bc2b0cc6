"""Newton–Schulz orthogonalisation (Muon's output map, NL eq. 24's σ).

``NS(G)``: scale ``X = G / max(‖G‖_F, ε)`` (transposed when tall), then ``k``
times ``A = X Xᵀ``, ``X ← a·X + (b·A + c·A²) X``; the result approximates
``U Vᵀ`` of ``G = U S Vᵀ`` (Jordan et al. 2024, "Muon"). Matrices are the last
two dims; leading dims are independent batch elements. For a 2-D input the
operations are exactly those of ``torch.optim.Muon`` (torch 2.13), so the
results agree bit for bit. Stacked inputs iterate with ``baddbmm`` in float32 /
float64; in bfloat16 / float16 ``baddbmm`` and ``addmm`` round differently now
and then, so there each matrix runs the 2-D sequence (bit-identical per element).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import Tensor

from .base import Transform, as_dict, lists

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7
NS_DTYPES = (None, "bfloat16", "float16", "float32", "float64")


_LOW_PRECISION = (torch.bfloat16, torch.float16)


def newton_schulz(g: Tensor, coefficients: Sequence[float] = NS_COEFFICIENTS,
                  steps: int = NS_STEPS, eps: float = NS_EPS,
                  dtype: str | None = "bfloat16") -> Tensor:
    """``NS_k^{(a,b,c)}(G)`` over the last two dims of ``g (..., m, n)``.

    ``dtype``: the precision of the iteration (``"bfloat16"`` as torch's Muon;
    ``None``: ``g``'s own dtype). Returns a tensor of that precision and ``g``'s shape.
    """
    if g.dim() < 2:
        raise ValueError(f"newton_schulz needs a matrix (..., m, n); got shape {tuple(g.shape)}")
    a, b, c = coefficients
    x = g.to(getattr(torch, dtype)) if dtype is not None else g
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT
    if isinstance(eps, Tensor):  # per leading element (…,) → (…, 1, 1), in x's dtype
        eps = eps.to(x.dtype).reshape(*eps.shape, *([1] * (x.dim() - eps.dim())))
    if x.dim() > 2 and x.dtype in _LOW_PRECISION:  # per matrix: see the module docstring
        flat = x.reshape(-1, *x.shape[-2:])
        eps_flat = eps.expand(*x.shape[:-2], 1, 1).reshape(-1) if isinstance(eps, Tensor) \
            else [eps] * len(flat)
        out = torch.stack([_ns_2d(m, a, b, c, steps, e) for m, e in zip(flat, eps_flat)])
        x = out.reshape(x.shape)
    elif x.dim() == 2:
        x = _ns_2d(x, a, b, c, steps, eps)
    else:
        lead = x.shape[:-2]
        x = x / torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True).clamp(min=eps)
        x = x.reshape(-1, *x.shape[-2:])  # (N, m, n)
        for _ in range(steps):
            gram = x @ x.mT
            poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
            x = torch.baddbmm(x, poly, x, beta=a)
        x = x.reshape(*lead, *x.shape[-2:])
    return x.mT if tall else x


def _ns_2d(x: Tensor, a: float, b: float, c: float, steps: int, eps: Any) -> Tensor:
    """The exact operation sequence of torch.optim.Muon on one (wide) matrix."""
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a)
    return x


def as_matrix(x: Tensor) -> Tensor:
    """A 1-D tensor as a row ``(1, n)``; others unchanged (matrix = last two dims)."""
    return x.unsqueeze(0) if x.dim() == 1 else x


def orthogonalize(xs: list[Tensor], coefficients, steps, eps, dtype) -> list[Tensor]:
    """:func:`newton_schulz` of each tensor, cast back to its dtype; tensors of equal
    shape are stacked and orthogonalised in one batched call when the iteration runs
    in float32/float64 and ``eps`` is a number."""
    out: list[Tensor | None] = [None] * len(xs)
    groups: dict[tuple, list[int]] = {}
    for i, x in enumerate(xs):
        stack = not isinstance(eps, Tensor) and dtype not in ("bfloat16", "float16") and \
            not (dtype is None and x.dtype in _LOW_PRECISION)
        key = (tuple(x.shape), x.dtype, x.device) if stack else i
        groups.setdefault(key, []).append(i)
    for idx in groups.values():
        mats = [as_matrix(xs[i]) for i in idx]
        if len(idx) == 1:
            ys = [newton_schulz(mats[0], coefficients, steps, eps, dtype)]
        else:
            ys = list(newton_schulz(torch.stack(mats), coefficients, steps, eps, dtype).unbind(0))
        for i, y in zip(idx, ys):
            out[i] = y.to(xs[i].dtype).reshape(xs[i].shape)
    return out  # type: ignore[return-value]


class Orthogonalize(Transform):
    """``u ← NS(u)`` per parameter (1-D parameters as a row ``(1, n)``)."""

    roles = {"ns_coefficients": NS_COEFFICIENTS, "ns_steps": NS_STEPS, "eps": NS_EPS,
             "ns_dtype": "bfloat16"}
    default_key = "orthogonalize"

    def update(self, updates, state, params, h, inplace=False):
        names = list(updates)
        (u,) = lists(names, updates)
        out = orthogonalize(u, self.hp(h, "ns_coefficients"), self.hp(h, "ns_steps"),
                            self.hp(h, "eps"), self.hp(h, "ns_dtype"))
        return as_dict(names, out), state


def muon_lr_ratio(adjust_lr_fn: Any, shape: Sequence[int]) -> float:
    """torch.optim.Muon's learning-rate adjustment for a ``(A, B)`` matrix:
    ``√max(1, A/B)`` ("original", the default) or ``0.2·√max(A, B)`` ("match_rms_adamw")."""
    A, B = shape[-2], shape[-1]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, A / B))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(A, B))
    return 1.0


class ScaleByShape(Transform):
    """``u ← r(shape)·u`` with Muon's ratio :func:`muon_lr_ratio` of each matrix."""

    roles = {"adjust_lr_fn": None}
    default_key = "adjust_lr"

    def update(self, updates, state, params, h, inplace=False):
        fn = self.hp(h, "adjust_lr_fn")
        return {n: u * muon_lr_ratio(fn, as_matrix(u).shape) for n, u in updates.items()}, state
