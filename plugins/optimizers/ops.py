"""Elementwise math over lists of tensors, shared by every update rule.

Each op takes lists of tensors (one per parameter) and hyperparameters that are
numbers, tensors over the leading dims (broadcast with :func:`nlframe.utils.bcast`)
or lists of numbers (one per parameter). Numbers on tensors that track no
gradient go through ``torch._foreach_*`` (one call for all parameters, the same
kernels as the per-tensor ops, so results are bit-identical); anything else goes
through plain per-tensor ops, so autograd flows to the params, the grads and
tensor hyperparameters.

``inplace=True`` lets an op reuse the storage of its first argument (only the
``torch.optim`` adapter asks for it, on state it owns); a caller must use the
returned list either way.
"""

from __future__ import annotations

from numbers import Number
from typing import Any, Sequence

import torch
from torch import Tensor

from nlframe.utils import bcast

Tensors = list[Tensor]


def is_num(h: Any) -> bool:
    """Whether ``h`` is a plain Python number (not a tensor)."""
    return isinstance(h, Number)


def _fast(lists: Sequence[Sequence[Tensor]], hypers: Sequence[Any] = ()) -> bool:
    """Whether the foreach path applies: numeric hypers, no autograd, equal shapes."""
    if not all(is_num(h) or (isinstance(h, list) and all(map(is_num, h))) for h in hypers):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for ts in lists for t in ts):
        return False
    first = lists[0]
    return all(len(ts) == len(first) and all(a.shape == b.shape for a, b in zip(first, ts))
               for ts in lists[1:])


def per(h: Any, *refs: Sequence[Tensor]) -> list:
    """``h`` for each parameter: numbers repeat, a tensor is broadcast over the leading
    dims of the widest tensor of each position in ``refs``, a list is taken as is (it
    already holds one value per parameter)."""
    if isinstance(h, list):
        return h
    n = len(refs[0])
    if isinstance(h, Tensor):
        return [bcast(h, max((r[i] for r in refs), key=Tensor.dim)) for i in range(n)]
    return [h] * n


def mul(xs: Tensors, s: Any, inplace: bool = False) -> Tensors:
    """``x · s``."""
    if _fast([xs], [s]):
        if inplace:
            torch._foreach_mul_(xs, s)
            return xs
        return list(torch._foreach_mul(xs, s))
    return [x * si for x, si in zip(xs, per(s, xs))]


def add(xs: Tensors, ys: Tensors, alpha: Any = 1, inplace: bool = False) -> Tensors:
    """``x + alpha · y``."""
    if _fast([xs, ys], [alpha]):
        if inplace:
            torch._foreach_add_(xs, ys, alpha=alpha)
            return xs
        return list(torch._foreach_add(xs, ys, alpha=alpha))
    return [x + a * y if not (is_num(a) and a == 1) else x + y
            for x, y, a in zip(xs, ys, per(alpha, xs, ys))]


def add_scalar(xs: Tensors, s: Any, inplace: bool = False) -> Tensors:
    """``x + s``."""
    if _fast([xs], [s]):
        if inplace:
            torch._foreach_add_(xs, s)
            return xs
        return list(torch._foreach_add(xs, s))
    return [x + si for x, si in zip(xs, per(s, xs))]


def lerp(xs: Tensors, ys: Tensors, w: Any, inplace: bool = False) -> Tensors:
    """``x + w · (y − x)`` (``torch.lerp``)."""
    if _fast([xs, ys], [w]) and not isinstance(w, list):
        if inplace:
            torch._foreach_lerp_(xs, ys, w)
            return xs
        return list(torch._foreach_lerp(xs, ys, w))
    return [torch.lerp(x, y, wi) for x, y, wi in zip(xs, ys, per(w, xs, ys))]


def addcmul(xs: Tensors, ys: Tensors, zs: Tensors, value: Any, inplace: bool = False) -> Tensors:
    """``x + value · y · z``."""
    if _fast([xs, ys, zs], [value]) and not isinstance(value, list):
        if inplace:
            torch._foreach_addcmul_(xs, ys, zs, value)
            return xs
        return list(torch._foreach_addcmul(xs, ys, zs, value))
    return [x + v * y * z for x, y, z, v in zip(xs, ys, zs, per(value, xs, ys, zs))]


def addcdiv(xs: Tensors, ys: Tensors, zs: Tensors, value: Any, inplace: bool = False) -> Tensors:
    """``x + value · y / z`` (``value``: a number or one per parameter)."""
    if _fast([xs, ys, zs], [value]):
        if inplace:
            torch._foreach_addcdiv_(xs, ys, zs, value)
            return xs
        return list(torch._foreach_addcdiv(xs, ys, zs, value))
    return [x + v * y / z for x, y, z, v in zip(xs, ys, zs, per(value, xs, ys, zs))]


def ema_sq(vs: Tensors, gs: Tensors, beta: Any, inplace: bool = False) -> Tensors:
    """``β · v + (1 − β) · g²`` computed as torch's Adam does (``mul_`` then ``addcmul_``)."""
    if _fast([vs, gs], [beta]) and not isinstance(beta, list):
        out = mul(vs, beta, inplace=inplace)
        torch._foreach_addcmul_(out, gs, gs, 1 - beta)
        return out
    return [v * b + (1 - b) * g * g for v, g, b in zip(vs, gs, per(beta, vs, gs))]


def div(xs: Tensors, ys: Tensors, into_second: bool = False) -> Tensors:
    """``x / y``; ``into_second``: the caller owns ``ys`` and lets the result reuse them."""
    if _fast([xs, ys]):
        if into_second:
            return [torch.div(x, y, out=y) for x, y in zip(xs, ys)]
        return list(torch._foreach_div(xs, ys))
    return [x / y for x, y in zip(xs, ys)]


def div_scalar(xs: Tensors, s: Any, inplace: bool = False) -> Tensors:
    """``x / s`` (``s`` a number, a list of numbers or a lead-dims tensor)."""
    if _fast([xs], [s]):
        if inplace:
            torch._foreach_div_(xs, s)
            return xs
        return list(torch._foreach_div(xs, s))
    return [x / si for x, si in zip(xs, per(s, xs))]


def sqrt(xs: Tensors) -> Tensors:
    """``√x``."""
    if _fast([xs]):
        return list(torch._foreach_sqrt(xs))
    return [torch.sqrt(x) for x in xs]


def maximum(xs: Tensors, ys: Tensors) -> Tensors:
    """Elementwise ``max(x, y)`` (shapes broadcast)."""
    return [torch.maximum(x, y) for x, y in zip(xs, ys)]


def neg(xs: Tensors) -> Tensors:
    """``−x``."""
    if _fast([xs]):
        return list(torch._foreach_neg(xs))
    return [-x for x in xs]


def clone(xs: Tensors) -> Tensors:
    """Copies (autograd-aware)."""
    return [x.clone() for x in xs]
