"""Elementwise gradient transforms: the parts update rules are chained from.

Each is a :class:`~.base.Transform`; shapes are those of the parameters (any
leading dims), hyperparameters numbers or tensors over the leading dims.
"""

from __future__ import annotations

from typing import Any

import torch

from nlframe.utils import bcast

from . import ops
from .base import AddDecayedWeights, ScaleByLr, Transform, as_dict, lists

__all__ = ["Negate", "AddDecayedWeights", "ScaleByLr", "SGDMomentum", "EmaMomentum", "Trace",
           "ScaleByAdam", "ScaleByRms"]


class Negate(Transform):
    """``u ← −u`` when ``maximize`` (gradient ascent, as torch's ``maximize=True``)."""

    roles = {"maximize": False}
    default_key = "negate"

    def update(self, updates, state, params, h, inplace=False):
        if not self.hp(h, "maximize"):
            return updates, state
        names = list(updates)
        return as_dict(names, ops.neg([updates[n] for n in names])), state


class SGDMomentum(Transform):
    """torch.optim.SGD's momentum: ``b ← μ·b + (1 − τ)·u`` (``b ← u`` on the first
    step), output ``u + μ·b`` (Nesterov) or ``b``.

    ``μ = 0`` given as a number is torch's plain SGD (output ``u``; the buffer
    just records ``u``, so that a batch with a zero ``μ`` tensor keeps the same
    state). As a tensor ``μ`` runs the momentum formula for every element
    (identical params whenever the dampening is 0). Unlike torch, switching
    ``μ`` from 0 to non-zero mid-run continues from the recorded buffer.
    """

    roles = {"momentum": 0.0, "dampening": 0.0, "nesterov": False}
    default_key = "sgd_momentum"

    def init(self, params, h):
        return {"step": {n: 0 for n in params},
                "momentum_buffer": {n: torch.zeros_like(p) for n, p in params.items()}}

    def update(self, updates, state, params, h, inplace=False):
        mu, damp = self.hp(h, "momentum"), self.hp(h, "dampening")
        names = list(updates)
        g, b = lists(names, updates, state["momentum_buffer"])
        steps = {n: state["step"][n] + 1 for n in names}
        if ops.is_num(mu) and mu == 0:
            new_b = [bi.copy_(gi) if inplace else gi.clone() for bi, gi in zip(b, g)]
            return updates, {"step": steps, "momentum_buffer": as_dict(names, new_b)}
        first = [i for i, n in enumerate(names) if state["step"][n] == 0]
        later = [i for i, n in enumerate(names) if state["step"][n] != 0]
        new_b: list = [None] * len(names)
        for i, t in zip(first, ops.clone([g[i] for i in first])):
            new_b[i] = t
        if later:
            gl = [g[i] for i in later]
            bl = ops.mul([b[i] for i in later], mu, inplace=inplace)
            bl = ops.add(bl, gl, alpha=1 - damp, inplace=True)
            for i, t in zip(later, bl):
                new_b[i] = t
        out = ops.add(g, new_b, alpha=mu) if self.hp(h, "nesterov") else new_b
        return as_dict(names, out), {"step": steps, "momentum_buffer": as_dict(names, new_b)}


class EmaMomentum(Transform):
    """Muon's momentum (torch.optim.Muon): ``b ← b + (1 − μ)(u − b)``, output
    ``u + μ(b − u)`` (Nesterov) or ``b``. Both are ``torch.lerp``."""

    roles = {"momentum": 0.95, "nesterov": True}
    default_key = "ema_momentum"

    def init(self, params, h):
        return {"momentum_buffer": {n: torch.zeros_like(p) for n, p in params.items()}}

    def update(self, updates, state, params, h, inplace=False):
        mu = self.hp(h, "momentum")
        names = list(updates)
        g, b = lists(names, updates, state["momentum_buffer"])
        b = ops.lerp(b, g, 1 - mu, inplace=inplace)
        out = ops.lerp(g, b, mu) if self.hp(h, "nesterov") else b
        return as_dict(names, out), {"momentum_buffer": as_dict(names, b)}


class Trace(Transform):
    """The momentum memory of NL eq. 17/20: ``m ← α·m − η·u``, output ``m``
    (``momentum`` α is the retention, ``lr`` η the memory's write rate)."""

    roles = {"momentum": 0.9, "lr": 1e-3}
    default_key = "trace"

    def init(self, params, h):
        return {"momentum": {n: torch.zeros_like(p) for n, p in params.items()}}

    def update(self, updates, state, params, h, inplace=False):
        names = list(updates)
        u, m = lists(names, updates, state["momentum"])
        m = ops.add(ops.mul(m, self.hp(h, "momentum"), inplace=inplace), u,
                    alpha=-self.hp(h, "lr"), inplace=True)
        return as_dict(names, m), {"momentum": as_dict(names, m)}


def _bias_corrections(beta: Any, steps: list[int], xs: list) -> list:
    """``1 − β^t`` per parameter: numbers for a number β, broadcast tensors otherwise."""
    if ops.is_num(beta):
        return [1 - beta ** t for t in steps]
    return [bcast(1 - beta ** t, x) for t, x in zip(steps, xs)]


class ScaleByAdam(Transform):
    """Adam's direction (torch.optim.Adam): ``m ← lerp(m, u, 1 − β1)``,
    ``v ← β2·v + (1 − β2)·u²``, ``u ← m / (√v̂ / √(1 − β2ᵗ) + ε) / (1 − β1ᵗ)`` with
    ``v̂ = max(v̂, v)`` under amsgrad (Kingma & Ba; Reddi et al.)."""

    roles = {"betas": (0.9, 0.999), "eps": 1e-8, "amsgrad": False}
    default_key = "adam"

    def init(self, params, h):
        zeros = lambda: {n: torch.zeros_like(p) for n, p in params.items()}  # noqa: E731
        state = {"step": {n: 0 for n in params}, "exp_avg": zeros(), "exp_avg_sq": zeros()}
        if self.hp(h, "amsgrad"):
            state["max_exp_avg_sq"] = zeros()
        return state

    def parts(self, updates, state, params, h, inplace=False):
        """``(m, d, c, state)`` with the update ``u = m / d / c``: torch's
        ``d = √v̂ / √(1 − β2ᵗ) + ε`` and ``c = 1 − β1ᵗ`` (one per parameter)."""
        b1, b2 = self.hp(h, "betas")
        eps = self.hp(h, "eps")
        names = list(updates)
        g, m, v = lists(names, updates, state["exp_avg"], state["exp_avg_sq"])
        steps = [state["step"][n] + 1 for n in names]
        m = ops.lerp(m, g, 1 - b1, inplace=inplace)
        v = ops.ema_sq(v, g, b2, inplace=inplace)
        new_state = {"step": as_dict(names, steps), "exp_avg": as_dict(names, m),
                     "exp_avg_sq": as_dict(names, v)}
        src = v
        if "max_exp_avg_sq" in state:  # kept (and frozen) while amsgrad is off
            vmax = [state["max_exp_avg_sq"][n] for n in names]
            if self.hp(h, "amsgrad"):
                vmax = src = ops.maximum(vmax, v)
            new_state["max_exp_avg_sq"] = as_dict(names, vmax)
        elif self.hp(h, "amsgrad"):
            raise ValueError("amsgrad=True needs the state created with amsgrad=True "
                             "(init(params, amsgrad=True), or the rule constructed with it)")
        bc2_sqrt = [c ** 0.5 for c in _bias_corrections(b2, steps, g)]
        denom = ops.add_scalar(ops.div_scalar(ops.sqrt(src), bc2_sqrt, inplace=True), eps,
                               inplace=True)
        return m, denom, _bias_corrections(b1, steps, g), new_state

    def update(self, updates, state, params, h, inplace=False):
        m, denom, bc1, new_state = self.parts(updates, state, params, h, inplace)
        out = ops.div_scalar(ops.div(m, denom, into_second=True), bc1, inplace=True)
        return as_dict(list(updates), out), new_state


class ScaleByRms(Transform):
    """Adam-style second-moment scaling: ``v ← β·v + (1 − β)·u²``,
    ``u ← u / (√(v / (1 − βᵗ)) + ε)`` (the diagonal preconditioner of NL eq. 20)."""

    roles = {"beta": 0.999, "eps": 1e-8}
    default_key = "rms"

    def init(self, params, h):
        return {"step": {n: 0 for n in params},
                "exp_avg_sq": {n: torch.zeros_like(p) for n, p in params.items()}}

    def update(self, updates, state, params, h, inplace=False):
        beta, eps = self.hp(h, "beta"), self.hp(h, "eps")
        names = list(updates)
        g, v = lists(names, updates, state["exp_avg_sq"])
        steps = [state["step"][n] + 1 for n in names]
        v = ops.ema_sq(v, g, beta, inplace=inplace)
        bc_sqrt = [c ** 0.5 for c in _bias_corrections(beta, steps, g)]
        denom = ops.add_scalar(ops.div_scalar(ops.sqrt(v), bc_sqrt, inplace=True), eps,
                               inplace=True)
        return (as_dict(names, ops.div(g, denom, into_second=True)),
                {"step": as_dict(names, steps), "exp_avg_sq": as_dict(names, v)})
