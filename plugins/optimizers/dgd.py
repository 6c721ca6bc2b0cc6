"""Delta gradient descent (NL arXiv 2512.24695, §2.3 "going beyond simple backpropagation")."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .base import (Transform, TransformRule, chain, check_nonneg, finite_in_finite_out,
                   same_structure)
from .transforms import ScaleByLr


def _input_for(x: Any, name: str, p: Tensor) -> Tensor | None:
    """The layer input of parameter ``name`` as ``(…, N, Din)``, or ``None`` (no input term)."""
    if isinstance(x, dict):
        x = x.get(name)
        explicit = x is not None
    else:
        explicit = False
    if x is None or p.dim() < 2:
        return None
    if x.shape[-1] != p.shape[-1]:
        if explicit:
            raise ValueError(f"dgd: x for parameter {name!r} has shape {tuple(x.shape)}, but "
                             f"the parameter {tuple(p.shape)} takes inputs of width {p.shape[-1]}")
        return None
    if x.dim() == p.dim() - 1:  # one input per leading element
        x = x.unsqueeze(-2)
    if x.dim() != p.dim() or x.shape[:-2] != p.shape[:-2]:
        raise ValueError(f"dgd: x of shape {tuple(x.shape)} does not fit parameter {name!r} of "
                         f"shape {tuple(p.shape)}; expected (…, Din) or (…, N, Din) with the "
                         f"parameter's leading dims {tuple(p.shape[:-2])}")
    return x


class DeltaDirection(Transform):
    """``u ← ∇L + (W Xᵀ) X`` for ``W (…, Dout, Din)`` with layer inputs ``X (…, N, Din)``
    (``u ← ∇L`` for parameters without an input)."""

    roles = {"x": None}
    default_key = "dgd"

    def update(self, updates, state, params, h, inplace=False):
        x = self.hp(h, "x")
        out = {}
        for n, g in updates.items():
            p = params[n]
            xi = _input_for(x, n, p)
            out[n] = g if xi is None else g + (p @ xi.mT) @ xi
        return out, state


class DGD(TransformRule):
    """``W ← W(I − η′ XᵀX) − η′ ∇_W L`` — for one input ``x``: ``W(I − η′ x xᵀ) − η′ ∇_y L ⊗ x``
    (NL arXiv 2512.24695, eqs. 28–29, the L2 objective ``‖W x − ∇_y L‖²`` of eq. 27).

    ``lr`` is η′ ≥ 0. ``x`` is the layer input, given per call as a
    hyperparameter: a tensor ``(…, Din)`` or ``(…, N, Din)`` (a batch of inputs,
    ``XᵀX = Σ_n x_n x_nᵀ``) applied to every parameter of at least 2 dims whose
    last dim is ``Din``, or a dict ``{param_name: tensor}``; ``∇_W L`` is the
    gradient passed in (``∇_y L ⊗ x`` for a linear layer). Parameters without an
    input (``x=None``, biases) take a plain GD step. In a scan the reference
    rule's ``structure = "dgd"`` lets ``memory_scan`` run it as a level: there the scan
    supplies every weight matrix's input and the retention ``1 − α_t`` (NL eq. 88), so
    ``W⁽ˡ⁾ ← W⁽ˡ⁾((1 − α_t)I − θ_t x⁽ˡ⁾_t x⁽ˡ⁾_tᵀ) − θ_t g⁽ˡ⁾_t`` per token.
    """

    hyperparams = {"lr": 1e-3, "x": None}
    structure = "dgd"
    invariants = (same_structure, finite_in_finite_out)

    def build(self):
        return chain(DeltaDirection(), ScaleByLr())

    def check_hyper(self, hyper):
        check_nonneg(hyper, "lr")
        x = hyper["x"]
        if x is not None and not isinstance(x, (Tensor, dict)):
            raise ValueError(f"x must be None, a tensor (…, Din) or a dict of tensors, got "
                             f"{type(x).__name__}")
