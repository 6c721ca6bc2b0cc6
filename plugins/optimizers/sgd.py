"""Stochastic gradient descent, exactly as ``torch.optim.SGD``."""

from __future__ import annotations

from .base import (TransformRule, chain, check_bool, check_nonneg, check_unit, finite_in_finite_out,
                   same_structure)
from .transforms import AddDecayedWeights, Negate, ScaleByLr, SGDMomentum


class SGD(TransformRule):
    """SGD with momentum: ``g ← ±∇L + λW``, ``b ← μb + (1 − τ)g`` (``b ← g`` first),
    ``W ← W − γ·(g + μb if nesterov else b)``.

    The update of ``torch.optim.SGD`` (Sutskever et al. 2013 form); in NL terms
    (arXiv 2512.24695, §2.3 eq. 17) momentum is a key-less memory of gradients.
    Hyperparameters as torch: ``lr`` γ ≥ 0, ``momentum`` μ ≥ 0, ``dampening`` τ
    ∈ [0, 1], ``weight_decay`` λ ≥ 0 (L2, added to the gradient), ``nesterov``
    (needs μ > 0 and τ = 0), ``maximize``. As an inner rule, ``momentum=0`` and
    no decay is plain GD: the scan's ``momentum`` rule with η = α = 0.
    """

    hyperparams = {"lr": 1e-3, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0,
                   "nesterov": False, "maximize": False}
    invariants = (same_structure, finite_in_finite_out)

    def build(self):
        return chain(Negate(), AddDecayedWeights(), SGDMomentum(), ScaleByLr())

    def check_hyper(self, hyper):
        check_nonneg(hyper, "lr", "momentum", "weight_decay")
        check_unit(hyper, "dampening")
        check_bool(hyper, "nesterov", "maximize")
        mu, damp = hyper["momentum"], hyper["dampening"]
        if hyper["nesterov"] and isinstance(mu, (int, float)) and (mu <= 0 or damp != 0):
            raise ValueError(f"nesterov=True requires momentum > 0 and dampening = 0; got "
                             f"momentum={mu}, dampening={damp}")
