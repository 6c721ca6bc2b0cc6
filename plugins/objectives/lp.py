"""ℓp surprise objective ``ℓ = (1/p) Σ_i |M(k)_i − v_i|^p``."""

from __future__ import annotations

from numbers import Real
from typing import Any

import torch
from torch import Tensor

from nlframe.interfaces import Objective


class LpObjective(Objective):
    """ℓp objective ``ℓ = (1/p) Σ_i |r_i|^p``, ``r = M_W(k) − v``;
    ``∂ℓ/∂pred = sign(r)·|r|^(p−1)`` (0 where ``r = 0``).

    Miras arXiv 2504.13173 (ℓp attentional bias; p = 2 is the L2 objective,
    p = 1 a robust sign update). Option ``p`` ≥ 1 (default 3). The gradient is
    written so that its own derivative stays finite at ``r = 0`` for 1 ≤ p < 2,
    where ``|r|^(p−2)`` would be infinite.
    """

    def __init__(self, *, p: float = 3.0, **unknown: Any) -> None:
        if unknown:
            raise TypeError(f"objective 'lp': unknown option(s) {sorted(unknown)}; "
                            "accepted: ['p']")
        if isinstance(p, bool) or not isinstance(p, Real) or not p >= 1:
            raise ValueError(f"objective 'lp': p must be a number >= 1, got {p!r}")
        self.p = float(p)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return (pred - target).abs().pow(self.p).sum(-1) / self.p

    def grad(self, pred: Tensor, target: Tensor) -> Tensor:
        r = pred - target
        mag = r.abs()
        nonzero = mag > 0
        safe = torch.where(nonzero, mag, torch.ones_like(mag))  # keeps pow's derivative finite
        return torch.where(nonzero, torch.sign(r) * safe.pow(self.p - 1.0), torch.zeros_like(r))
