"""Adam and AdamW, exactly as ``torch.optim.Adam`` / ``torch.optim.AdamW``."""

from __future__ import annotations

from .base import (TransformRule, chain, check_betas, check_bool, check_nonneg, check_positive,
                   finite_in_finite_out, same_structure)
from .transforms import AddDecayedWeights, Negate, ScaleByAdam, ScaleByLr


def _check_adam(hyper) -> None:
    check_nonneg(hyper, "lr", "weight_decay")
    check_positive(hyper, "eps")
    check_betas(hyper, "betas", 2)
    check_bool(hyper, "amsgrad", "maximize")


class Adam(TransformRule):
    """Adam: ``g ← ±∇L + λW``, ``m ← β1 m + (1−β1) g``, ``v ← β2 v + (1−β2) g²``,
    ``W ← W − γ/(1−β1ᵗ) · m / (√(v̂/(1−β2ᵗ)) + ε)``, ``v̂ = v`` or ``max(v̂, v)`` (amsgrad).

    ``torch.optim.Adam`` (Kingma & Ba 2015, Alg. 1; eps outside the square root,
    L2 ``weight_decay`` added to the gradient). NL (arXiv 2512.24695, §2.3 and
    App. C.4) reads Adam as the optimal L2 associative memory of gradient
    statistics. Hyperparameters as torch: ``lr`` ≥ 0, ``betas`` ∈ [0, 1)²,
    ``eps`` > 0, ``weight_decay`` ≥ 0, ``amsgrad``, ``maximize``.
    """

    hyperparams = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                   "amsgrad": False, "maximize": False}
    invariants = (same_structure, finite_in_finite_out)

    def build(self):
        return chain(Negate(), AddDecayedWeights(), ScaleByAdam(), ScaleByLr())

    def check_hyper(self, hyper):
        _check_adam(hyper)


class AdamW(TransformRule):
    """AdamW: Adam's direction ``d`` with decoupled decay, ``W ← W − γ·(d + λW)``.

    ``torch.optim.AdamW`` (Loshchilov & Hutter, arXiv 1711.05101), applied as torch does,
    ``W·(1 − γλ) − γ d`` (bit-identical on CPU). Defaults as torch (``weight_decay=0.01``).
    """

    hyperparams = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2,
                   "amsgrad": False, "maximize": False}
    invariants = (same_structure, finite_in_finite_out)

    def build(self):
        return chain(Negate(), ScaleByAdam(), AddDecayedWeights(), ScaleByLr())

    def check_hyper(self, hyper):
        _check_adam(hyper)
