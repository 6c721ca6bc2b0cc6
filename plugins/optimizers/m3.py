"""Multi-scale momentum Muon, M3 (NL arXiv 2512.24695, Algorithm 1)."""

from __future__ import annotations

import torch

from . import ops
from .base import (Transform, TransformRule, as_dict, chain, check_betas, check_int,
                   check_nonneg, check_positive, finite_in_finite_out, lists, same_structure)
from .muon import check_ns
from .newton_schulz import NS_COEFFICIENTS, NS_EPS, NS_STEPS, orthogonalize
from .base import ScaleByLr
from .transforms import AddDecayedWeights, _bias_corrections


class M3Direction(Transform):
    """``d = (NS(m1) + α·NS(m2)) / (√v̂ + ε)`` from a fast and a slow momentum.

    Every step: ``m1 ← lerp(m1, g, 1 − β1)``, ``v ← β2·v + (1 − β2)·g²``,
    ``acc ← acc + g``. Every ``slow_every`` (f) steps, at the step that closes
    the chunk: ``m2 ← lerp(m2, acc/f, 1 − β3)``, ``o2 ← NS(m2)``, ``acc ← 0``;
    ``o2`` is reused until the next chunk closes. ``v̂ = v / (1 − β2ᵗ)``.
    ``α = 0`` (a number) turns the slow path off in the output.
    """

    roles = {"betas": (0.9, 0.999, 0.95), "alpha": 0.5, "slow_every": 16, "eps": 1e-8,
             "ns_coefficients": NS_COEFFICIENTS, "ns_steps": NS_STEPS, "ns_eps": NS_EPS,
             "ns_dtype": None}
    default_key = "m3"

    def init(self, params, h):
        zeros = lambda: {n: torch.zeros_like(p) for n, p in params.items()}  # noqa: E731
        return {"step": {n: 0 for n in params}, "m1": zeros(), "v": zeros(), "m2": zeros(),
                "acc": zeros(), "o2": zeros()}

    def _ns(self, xs, h):
        return orthogonalize(xs, self.hp(h, "ns_coefficients"), self.hp(h, "ns_steps"),
                             self.hp(h, "ns_eps"), self.hp(h, "ns_dtype"))

    def update(self, updates, state, params, h, inplace=False):
        b1, b2, b3 = self.hp(h, "betas")
        alpha, f, eps = self.hp(h, "alpha"), self.hp(h, "slow_every"), self.hp(h, "eps")
        names = list(updates)
        g, m1, v, m2, acc, o2 = lists(names, updates, *(state[k] for k in
                                                         ("m1", "v", "m2", "acc", "o2")))
        steps = [state["step"][n] + 1 for n in names]
        m1 = ops.lerp(m1, g, 1 - b1, inplace=inplace)
        v = ops.ema_sq(v, g, b2, inplace=inplace)
        acc = ops.add(acc, g, inplace=inplace)
        close = [i for i, t in enumerate(steps) if t % f == 0]
        if close:  # the slow level's update, at its own frequency
            m2_c = ops.lerp([m2[i] for i in close], [acc[i] / f for i in close], 1 - b3)
            o2_c = self._ns(m2_c, h)
            for j, i in enumerate(close):
                m2[i], o2[i], acc[i] = m2_c[j], o2_c[j], torch.zeros_like(acc[i])
        o = self._ns(m1, h)
        if not (ops.is_num(alpha) and alpha == 0):
            o = ops.add(o, o2, alpha=alpha)
        bc_sqrt = [c ** 0.5 for c in _bias_corrections(b2, steps, g)]
        denom = ops.add_scalar(ops.div_scalar(ops.sqrt(v), bc_sqrt, inplace=True), eps,
                               inplace=True)
        new_state = {"step": as_dict(names, steps), "m1": as_dict(names, m1),
                     "v": as_dict(names, v), "m2": as_dict(names, m2), "acc": as_dict(names, acc),
                     "o2": as_dict(names, o2)}
        return as_dict(names, ops.div(o, denom, into_second=True)), new_state


class M3(TransformRule):
    """M3: ``W ← W − γ·(d + λW)`` with ``d = (NS(m1) + α·NS(m2)) / (√v̂ + ε)``
    (NL arXiv 2512.24695, Algorithm 1: fast momentum every step, slow momentum
    every ``slow_every`` steps from the gradients accumulated over the chunk, both
    Newton–Schulz orthogonalised, scaled by Adam-style second moments).

    Deviations from the pseudo-code, for scale-free hyperparameters: the
    momenta and second moment are exponential averages (``lerp`` with
    ``1 − β``) instead of sums ``m ← m + β g``, the slow momentum averages the
    chunk's gradients, and ``v`` is bias-corrected. The base rule — ``alpha = 0``
    (slow path off) — is Muon's direction with Adam's second moment:
    ``W ← W − γ·(NS(m1)/(√v̂ + ε) + λW)``; with ``slow_every = 1`` and ``β3 = β1``
    the slow momentum equals the fast one and ``d`` is ``(1 + α)`` times the base.
    ``betas`` (β1, β2, β3) ∈ [0, 1)³, ``alpha`` ≥ 0, ``slow_every`` ≥ 1, ``eps`` > 0,
    ``ns_*`` as muon (``ns_dtype=None``: the parameter dtype), ``weight_decay`` ≥ 0
    (decoupled). 1-D parameters are orthogonalised as a row.
    """

    hyperparams = {"lr": 1e-3, "weight_decay": 0.0, "betas": (0.9, 0.999, 0.95), "alpha": 0.5,
                   "slow_every": 16, "eps": 1e-8, "ns_coefficients": NS_COEFFICIENTS,
                   "ns_steps": NS_STEPS, "ns_eps": NS_EPS, "ns_dtype": None}
    invariants = (same_structure, finite_in_finite_out)

    def build(self):
        return chain(M3Direction(), AddDecayedWeights(), ScaleByLr())

    def check_hyper(self, hyper):
        check_nonneg(hyper, "lr", "weight_decay", "alpha")
        check_positive(hyper, "eps")
        check_betas(hyper, "betas", 3)
        check_int(hyper, "slow_every", 1)
        check_ns({**hyper, "eps": hyper["ns_eps"]})
