"""L2 (regression) surprise objective ``ℓ = ½‖M(k) − v‖²``."""

from __future__ import annotations

from torch import Tensor

from nlframe.interfaces import Objective


class L2Objective(Objective):
    """L2 objective ``ℓ(W; k, v) = ½‖M_W(k) − v‖²``, ``∂ℓ/∂pred = pred − v``.

    With a linear memory and chunk size 1 this is the delta rule (DeltaNet arXiv
    2406.06484; Titans arXiv 2501.00663 eq. 12, up to the factor ½).
    Affine gradient ``(a, b) = (1, −1)``. No options.
    """

    affine_grad = (1.0, -1.0)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return 0.5 * ((pred - target) ** 2).sum(-1)

    def grad(self, pred: Tensor, target: Tensor) -> Tensor:
        return pred - target
