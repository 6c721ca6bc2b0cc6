"""Delta momentum (NL arXiv 2512.24695, §2.3 "more expressive objectives")."""

from __future__ import annotations

import torch

from . import ops
from .base import (Transform, TransformRule, as_dict, check_bool, check_nonneg, check_unit,
                   finite_in_finite_out, lists, same_structure)
from .newton_schulz import as_matrix
from .preconditioned_momentum import PRECONDITION_HYPER, Precondition, check_precondition

_NORM_EPS = 1e-12


class DeltaTrace(Transform):
    """``m ← m(α·I − β·ĜᵀĜ) − η·P(G)``, output ``m``: the momentum memory trained with an
    L2 objective ``‖m ∇Lᵀ − P‖²`` by one gradient step — the delta rule on gradients.

    ``G`` is a parameter's gradient viewed as a matrix ``(…, R, D)`` (its last two
    dims; a 1-D gradient is a row ``(1, D)``), so ``ĜᵀĜ`` is ``D × D`` over the last
    dim, batched over leading dims; it is applied as ``(m Ĝᵀ) Ĝ`` (no ``D × D``
    tensor). ``Ĝ = G / ‖G‖_F`` when ``normalize`` (keeps ``αI − βĜᵀĜ`` contractive
    for ``β ≤ 1``), else ``Ĝ = G`` (the paper's literal form).
    """

    roles = {"momentum": 0.9, "lr": 1e-3, "delta_rate": 1.0, "normalize": True}
    default_key = "delta"

    def __init__(self, **names):
        super().__init__(**names)
        self.precondition = Precondition()

    @property
    def hyperparams(self):
        return {**super().hyperparams, **self.precondition.hyperparams}

    def init(self, params, h):
        return {"momentum": {n: torch.zeros_like(p) for n, p in params.items()},
                "precondition": self.precondition.init(params, h)}

    def update(self, updates, state, params, h, inplace=False):
        names = list(updates)
        pg, pstate = self.precondition.update(updates, state["precondition"], params, h, inplace)
        g, m, pg = lists(names, updates, state["momentum"], pg)
        forget = []
        for gi, mi in zip(g, m):
            G, M = as_matrix(gi), as_matrix(mi)  # (…, R, D)
            if self.hp(h, "normalize"):
                nrm = torch.linalg.vector_norm(G, dim=(-2, -1), keepdim=True)
                G = G / nrm.clamp(min=_NORM_EPS)
            forget.append(((M @ G.mT) @ G).reshape(mi.shape))  # m ĜᵀĜ
        alpha, beta, eta = self.hp(h, "momentum"), self.hp(h, "delta_rate"), self.hp(h, "lr")
        new_m = ops.add(ops.add(ops.mul(m, alpha), forget, alpha=-beta), pg, alpha=-eta)
        return as_dict(names, new_m), {"momentum": as_dict(names, new_m), "precondition": pstate}


class DeltaMomentum(TransformRule):
    """``m ← m(α·I − β·ĜᵀĜ) − η·P(∇L)``, ``W ← W + m`` (NL arXiv 2512.24695, §2.3
    eqs. 21–22).

    See :class:`DeltaTrace` for how ``ĜᵀĜ`` is formed. ``lr`` η ≥ 0,
    ``momentum`` α ∈ [0, 1], ``delta_rate`` β ≥ 0 (1 in the paper),
    ``normalize`` (default True), and the preconditioner options of
    ``preconditioned-momentum``. With β = 0 it is ``preconditioned-momentum``.
    """

    hyperparams = {"lr": 1e-3, "momentum": 0.9, "delta_rate": 1.0, "normalize": True,
                   **PRECONDITION_HYPER}
    invariants = (same_structure, finite_in_finite_out)
    zero_lr_hyper = {"lr": 0.0, "momentum": 0.0, "delta_rate": 0.0}

    def build(self):
        return DeltaTrace()

    def check_hyper(self, hyper):
        check_nonneg(hyper, "lr", "delta_rate")
        check_unit(hyper, "momentum")
        check_bool(hyper, "normalize")
        check_precondition(hyper)
