"""The scan's momentum rule with retention (decay)."""

from __future__ import annotations

from typing import Any

import torch

from nlframe import buffers
from nlframe.interfaces import OptState, Params, UpdateRule
from nlframe.utils import bcast

from .base import finite_in_finite_out, same_structure


def write_is_retention_plus_momentum(rule, grads, state, params, new_params, new_state, hyper):
    """``W' = (1 − α)·W + S'`` with ``S' = η·S − θ·g`` (the scan contract's two lines)."""
    for n, p in params.items():
        s = bcast(hyper["momentum"], p) * state["momentum"][n] - bcast(hyper["lr"], p) * grads[n]
        torch.testing.assert_close(new_state["momentum"][n], s, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(new_params[n], (1 - bcast(hyper["decay"], p)) * p + s,
                                   rtol=1e-12, atol=1e-12)


class Momentum(UpdateRule):
    """Momentum with retention: ``S ← η·S − θ·g``, ``W ← (1 − α)·W + S``.

    The update rule of the scan contract (docs/concepts.md; Titans arXiv 2501.00663
    eqs. 9–10 with surprise momentum η and forgetting gate α; NL arXiv
    2512.24695, momentum as a memory of past gradients). ``η = 0`` is plain
    gradient descent with weight decay α. Hyperparameters: ``lr`` θ ≥ 0,
    ``decay`` α ∈ [0, 1], ``momentum`` η ∈ [0, 1] — numbers or tensors over the
    leading dims.
    """

    hyperparams = {"lr": 0.1, "decay": 0.0, "momentum": 0.0}
    structure = "momentum"
    zero_lr_hyper = {"lr": 0.0, "decay": 0.0, "momentum": 0.0}
    invariants = (same_structure, finite_in_finite_out, write_is_retention_plus_momentum)

    def check_hyper(self, hyper: dict[str, Any]) -> None:
        if isinstance(hyper["lr"], (int, float)) and hyper["lr"] < 0:
            raise ValueError(f"lr must be >= 0, got {hyper['lr']}")
        for name in ("decay", "momentum"):
            v = hyper[name]
            if isinstance(v, (int, float)) and not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")

    def init(self, params: Params) -> OptState:
        """``S = 0`` per parameter (large CPU buffers reused, :mod:`nlframe.buffers`)."""
        return {"momentum": {n: buffers.empty(p.shape, p).zero_() for n, p in params.items()}}

    def update(self, grads: Params, state: OptState, params: Params,
               **hyper: Any) -> tuple[Params, OptState]:
        h = self.resolve(hyper)
        new_params, new_mom = {}, {}
        for n, p in params.items():
            s = bcast(h["momentum"], p) * state["momentum"][n] - bcast(h["lr"], p) * grads[n]
            new_mom[n] = s
            new_params[n] = (1 - bcast(h["decay"], p)) * p + s
        return new_params, {"momentum": new_mom}
