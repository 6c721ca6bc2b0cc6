"""Momentum with a non-linear output map (NL arXiv 2512.24695, §2.3 eq. 24)."""

from __future__ import annotations

import torch

from .base import (Transform, TransformRule, chain, check_bool, check_choice, check_nonneg,
                   finite_in_finite_out, same_structure)
from .muon import check_ns
from .newton_schulz import NS_COEFFICIENTS, NS_EPS, NS_STEPS, Orthogonalize
from .transforms import AddDecayedWeights, EmaMomentum, ScaleByLr

OUTPUTS = ("newton-schulz", "identity", "sign", "tanh")


class OutputMap(Transform):
    """``u ← σ(u)`` with ``σ`` = ``output``: Newton–Schulz (last two dims, 1-D as a row),
    identity, sign or tanh."""

    roles = {"output": "newton-schulz"}
    default_key = "output"

    def __init__(self, **names):
        super().__init__(**names)
        self.ortho = Orthogonalize()

    @property
    def hyperparams(self):
        return {**super().hyperparams, **self.ortho.hyperparams}

    def update(self, updates, state, params, h, inplace=False):
        kind = self.hp(h, "output")
        if kind == "newton-schulz":
            return self.ortho.update(updates, state, params, h, inplace)[0], state
        if kind == "sign":
            return {n: torch.sign(u) for n, u in updates.items()}, state
        if kind == "tanh":
            return {n: torch.tanh(u) for n, u in updates.items()}, state
        return updates, state


class NonlinearOutput(TransformRule):
    """``W ← W − γ·(σ(m) + λW)`` with the momentum memory ``m ← μm + (1 − μ)∇L``
    read through ``σ`` (Nesterov: ``σ(∇L + μ(m − ∇L))``).

    NL arXiv 2512.24695, §2.3 eq. 24 (``W ← W + σ(m(u))``): with ``σ`` =
    Newton–Schulz and a linear momentum this is Muon — it equals ``muon``
    whenever Muon's shape ratio is 1 (``A ≤ B`` with ``adjust_lr_fn="original"``).
    ``output``: ``newton-schulz`` (default) / ``identity`` / ``sign`` / ``tanh``;
    ``ns_dtype=None`` (default) iterates in the parameter dtype, ``"bfloat16"`` as
    torch's Muon. Other hyperparameters as ``muon``.
    """

    hyperparams = {"lr": 1e-3, "momentum": 0.95, "nesterov": True, "weight_decay": 0.0,
                   "output": "newton-schulz", "ns_coefficients": NS_COEFFICIENTS,
                   "ns_steps": NS_STEPS, "eps": NS_EPS, "ns_dtype": None}
    invariants = (same_structure, finite_in_finite_out)

    def build(self):
        return chain(EmaMomentum(), OutputMap(), AddDecayedWeights(), ScaleByLr())

    def check_hyper(self, hyper):
        check_nonneg(hyper, "lr", "momentum", "weight_decay")
        check_bool(hyper, "nesterov")
        check_choice(hyper, "output", OUTPUTS)
        check_ns(hyper)
