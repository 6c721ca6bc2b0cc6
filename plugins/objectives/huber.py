"""Huber surprise objective ``ℓ = Σ_i huber_δ(M(k)_i − v_i)``."""

from __future__ import annotations

from numbers import Real
from typing import Any

import torch.nn.functional as F
from torch import Tensor

from nlframe.interfaces import Objective


class HuberObjective(Objective):
    """Huber objective ``ℓ = Σ_i h_δ(r_i)``, ``r = M_W(k) − v``, ``h_δ(r) = ½r²`` for
    ``|r| ≤ δ`` else ``δ(|r| − ½δ)``; ``∂ℓ/∂pred = clamp(r, −δ, δ)``.

    Equals ``torch.nn.functional.huber_loss(pred, v, delta=δ, reduction="sum")`` per
    token (Miras arXiv 2504.13173, Huber attentional bias, robust to outlier
    values). Option ``delta`` δ > 0 (default 1).
    """

    def __init__(self, *, delta: float = 1.0, **unknown: Any) -> None:
        if unknown:
            raise TypeError(f"objective 'huber': unknown option(s) {sorted(unknown)}; "
                            "accepted: ['delta']")
        if isinstance(delta, bool) or not isinstance(delta, Real) or not delta > 0:
            raise ValueError(f"objective 'huber': delta must be a number > 0, got {delta!r}")
        self.delta = float(delta)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        pred, target = pred.broadcast_to(target.shape), target.broadcast_to(pred.shape)
        return F.huber_loss(pred, target, reduction="none", delta=self.delta).sum(-1)

    def grad(self, pred: Tensor, target: Tensor) -> Tensor:
        return (pred - target).clamp(-self.delta, self.delta)
