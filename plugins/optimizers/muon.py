"""Muon, exactly as ``torch.optim.Muon`` (torch 2.13) for 2-D parameters."""

from __future__ import annotations

from .base import (TransformRule, chain, check_bool, check_choice, check_int, check_nonneg,
                   check_positive, finite_in_finite_out, same_structure)
from .newton_schulz import NS_COEFFICIENTS, NS_DTYPES, NS_EPS, NS_STEPS, Orthogonalize, ScaleByShape
from .transforms import AddDecayedWeights, EmaMomentum, ScaleByLr


def check_ns(hyper) -> None:
    """Newton–Schulz options: 3 coefficients, ``0 ≤ ns_steps < 100``, ``eps`` > 0, a dtype."""
    c = hyper["ns_coefficients"]
    if not isinstance(c, (tuple, list)) or len(c) != 3:
        raise ValueError(f"ns_coefficients must be a tuple of 3 floats, got {c!r}")
    check_int(hyper, "ns_steps", 0, 100)
    check_positive(hyper, "eps")
    check_choice(hyper, "ns_dtype", NS_DTYPES)


class Muon(TransformRule):
    """Muon: ``B ← μB + (1−μ)g``, ``O = NS(g + μ(B − g) if nesterov else B)``,
    ``W ← W − γ·(r(A, B)·O + λW)``.

    ``torch.optim.Muon`` (Jordan et al. 2024; Liu et al. 2025 for
    ``adjust_lr_fn="match_rms_adamw"``, r = 0.2√max(A, B); default "original",
    r = √max(1, A/B)); NS in bfloat16 with torch's coefficients, steps and eps.
    NL (arXiv 2512.24695, §2.3 eq. 24) reads it as momentum with a Newton–Schulz
    output non-linearity (see ``nonlinear-output``).

    Non-2-D parameters: the last two dims are the matrix and any leading dims
    are independent batch elements (the inner-level convention, e.g. fast
    weights ``(B, H, Dv, Dk)``); a 1-D parameter is rejected with its name —
    give biases and norms another rule (``adamw``) through param groups or
    :func:`~.base.partition`. ``ns_dtype`` (extension; default ``"bfloat16"``
    as torch) sets the iteration's precision, ``None`` for the param dtype.
    """

    hyperparams = {"lr": 1e-3, "weight_decay": 0.1, "momentum": 0.95, "nesterov": True,
                   "ns_coefficients": NS_COEFFICIENTS, "eps": NS_EPS, "ns_steps": NS_STEPS,
                   "adjust_lr_fn": None, "ns_dtype": "bfloat16"}
    invariants = (same_structure, finite_in_finite_out)

    def build(self):
        return chain(EmaMomentum(), Orthogonalize(), ScaleByShape(), AddDecayedWeights(),
                     ScaleByLr())

    def check_hyper(self, hyper):
        check_nonneg(hyper, "lr", "momentum", "weight_decay")
        check_bool(hyper, "nesterov")
        check_choice(hyper, "adjust_lr_fn", (None, "original", "match_rms_adamw"))
        check_ns(hyper)

    def init(self, params, **hyper):
        for n, p in params.items():
            if p.dim() < 2:
                raise ValueError(f"muon: parameter {n!r} has shape {tuple(p.shape)}; Muon "
                                 "orthogonalises matrices (the last two dims). Optimise 1-D "
                                 "parameters with another rule, e.g. adamw in its own param group")
        return super().init(params, **hyper)
