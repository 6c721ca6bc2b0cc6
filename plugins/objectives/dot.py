"""Dot-product (Hebbian) surprise objective ``ℓ = −⟨M(k), v⟩``."""

from __future__ import annotations

from torch import Tensor

from nlframe.interfaces import Objective


class DotObjective(Objective):
    """Dot-product objective ``ℓ(W; k, v) = −⟨M_W(k), v⟩``, ``∂ℓ/∂pred = −v``.

    With a linear memory one gradient step is the Hebbian write ``W += θ v kᵀ`` of
    linear attention (Miras arXiv 2504.13173, dot-product attentional bias;
    NL arXiv 2512.24695, linear attention as an associative memory).
    Affine gradient ``(a, b) = (0, −1)``. No options.
    """

    affine_grad = (0.0, -1.0)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return -(pred * target).sum(-1)

    def grad(self, pred: Tensor, target: Tensor) -> Tensor:
        return -target.expand_as(pred)
