"""Preconditioned momentum (NL arXiv 2512.24695, §2.3 "more expressive association")."""

from __future__ import annotations

from .base import (Transform, TransformRule, chain, check_choice, check_nonneg, check_positive,
                   check_unit, finite_in_finite_out, same_structure)
from .muon import check_ns
from .newton_schulz import NS_COEFFICIENTS, NS_EPS, NS_STEPS, Orthogonalize
from .transforms import ScaleByRms, Trace

PRECONDITIONERS = ("identity", "adam", "newton-schulz")


class Precondition(Transform):
    """``u ← P(u)``: the value map of the momentum memory, chosen by ``preconditioner``.

    ``"identity"``: ``P u = u``; ``"adam"`` (default): diagonal ``u / (√v̂ + ε)``
    with ``v ← β2·v + (1 − β2)·u²`` (bias-corrected); ``"newton-schulz"``:
    ``NS(u)`` over the last two dims (1-D parameters as a row; ε of the iteration
    fixed at torch's 1e-7). The Adam state exists for every choice, so the
    choice may change per call.
    """

    roles = {"preconditioner": "adam"}
    default_key = "precondition"

    def __init__(self, **names):
        super().__init__(**names)
        self.rms = ScaleByRms(beta="beta2", key="rms")
        self.ortho = Orthogonalize()

    @property
    def hyperparams(self):
        ortho = {k: v for k, v in self.ortho.hyperparams.items() if k != "eps"}
        return {**super().hyperparams, **self.rms.hyperparams, **ortho}

    def init(self, params, h):
        return {"rms": self.rms.init(params, h)}

    def update(self, updates, state, params, h, inplace=False):
        kind = self.hp(h, "preconditioner")
        if kind == "adam":
            u, rms = self.rms.update(updates, state["rms"], params, h, inplace)
            return u, {"rms": rms}
        if kind == "newton-schulz":
            u, _ = self.ortho.update(updates, state, params, {**h, "eps": NS_EPS}, inplace)
            return u, state
        return updates, state


PRECONDITION_HYPER = {"preconditioner": "adam", "beta2": 0.999, "eps": 1e-8,
                      "ns_coefficients": NS_COEFFICIENTS, "ns_steps": NS_STEPS, "ns_dtype": None}


def check_precondition(hyper) -> None:
    check_choice(hyper, "preconditioner", PRECONDITIONERS)
    check_unit(hyper, "beta2", closed=False)
    check_positive(hyper, "eps")
    check_ns({**hyper, "eps": NS_EPS})


class PreconditionedMomentum(TransformRule):
    """``m ← α·m − η·P(∇L)``, ``W ← W + m`` (NL arXiv 2512.24695, §2.3 eq. 20; eq. 17
    with ``P = I``).

    The momentum is a memory mapping gradients to values ``P(∇L)`` (eq. 19's
    objective ``⟨m ∇Lᵀ, P⟩``, one gradient step). ``lr`` η ≥ 0, ``momentum`` α ∈
    [0, 1], ``preconditioner`` one of ``adam`` (default) / ``identity`` / ``newton-schulz``
    (see :class:`Precondition`; ``beta2``, ``eps`` for adam; ``ns_*`` for
    Newton–Schulz, ``ns_dtype=None`` iterates in the parameter dtype). With
    ``P = I`` this is the scan's ``momentum`` rule without decay.
    """

    hyperparams = {"lr": 1e-3, "momentum": 0.9, **PRECONDITION_HYPER}
    invariants = (same_structure, finite_in_finite_out)
    zero_lr_hyper = {"lr": 0.0, "momentum": 0.0}

    def build(self):
        return chain(Precondition(), Trace())

    def check_hyper(self, hyper):
        check_nonneg(hyper, "lr")
        check_unit(hyper, "momentum")
        check_precondition(hyper)
