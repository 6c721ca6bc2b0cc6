"""Deep momentum gradient descent (NL arXiv 2512.24695, §2.3 "more expressive memory")."""

from __future__ import annotations

import torch
from torch import Tensor

from . import ops
from .base import (Transform, TransformRule, chain, check_nonneg, check_unit,
                   finite_in_finite_out, same_structure)
from .newton_schulz import as_matrix
from .transforms import ScaleByLr


def mlp_read(w1: Tensor, w2: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """``M_φ(k) = W2 tanh(W1 k)`` per row: ``k (…, R, D)`` → ``(y (…, R, D), a (…, R, Dh))``."""
    a = torch.tanh(k @ w1.mT)
    return a @ w2.mT, a


class DeepMomentum(Transform):
    """The momentum is an MLP memory ``M_φ`` over gradient rows, written by its own step
    ``φ ← α·φ − η·∇_φ ℓ`` on ``ℓ(φ) = 1/(2R) Σ_r ‖M_φ(g_r) − g_r‖²`` and read after
    the write: output ``M_φ'(G)``.

    A parameter's gradient is a matrix ``(…, R, D)`` (last two dims; 1-D as a
    row); each row ``g_r`` is a key and its own value, so the memory learns the
    map that gradients have followed and returns the current gradient filtered
    through it. ``φ = (W1 (…, D, D), W2 (…, D, D))`` starts at ``W1 = I, W2 = 0``
    (deterministic; the first write is ``W2 = η/R · Gᵀ tanh(G)``). Gradients of
    ``ℓ`` are closed form, so autograd flows through the update.
    """

    roles = {"momentum": 0.9, "inner_lr": 0.1}
    default_key = "memory"

    def init(self, params, h):
        w1, w2 = {}, {}
        for n, p in params.items():
            lead, d = as_matrix(p).shape[:-2], p.shape[-1]
            eye = torch.eye(d, dtype=p.dtype, device=p.device)
            w1[n] = eye.expand(*lead, d, d).clone()
            w2[n] = torch.zeros(*lead, d, d, dtype=p.dtype, device=p.device)
        return {"w1": w1, "w2": w2}

    def update(self, updates, state, params, h, inplace=False):
        names = list(updates)
        alpha, eta = self.hp(h, "momentum"), self.hp(h, "inner_lr")
        grads_w1, grads_w2, keys = [], [], []
        for n in names:
            k = as_matrix(updates[n])  # (…, R, D)
            w1, w2 = state["w1"][n], state["w2"][n]
            y, a = mlp_read(w1, w2, k)
            e = (y - k) / k.shape[-2]  # ∂ℓ/∂y (…, R, D)
            grads_w2.append(e.mT @ a)  # (…, D, Dh)
            grads_w1.append(((e @ w2) * (1 - a * a)).mT @ k)  # (…, Dh, D)
            keys.append(k)
        w1 = ops.add(ops.mul([state["w1"][n] for n in names], alpha), grads_w1, alpha=-eta)
        w2 = ops.add(ops.mul([state["w2"][n] for n in names], alpha), grads_w2, alpha=-eta)
        out = {n: mlp_read(a1, a2, k)[0].reshape(updates[n].shape)
               for n, a1, a2, k in zip(names, w1, w2, keys)}
        return out, {"w1": dict(zip(names, w1)), "w2": dict(zip(names, w2))}


class DMGD(TransformRule):
    """``φ ← α·φ − η·∇_φ ℓ(φ; ∇L)``, ``W ← W − γ·M_φ(∇L)`` (NL arXiv 2512.24695, §2.3
    eq. 23, ``W_{i+1} = W_i + m_{i+1}(u_i)`` with an MLP momentum ``m``).

    See :class:`DeepMomentum` for the memory and its L2 objective. ``lr`` γ ≥ 0
    scales the memory's output, ``momentum`` α ∈ [0, 1] is the memory's
    retention, ``inner_lr`` η ≥ 0 its write rate. State per parameter of width
    ``D``: two ``D × D`` matrices (per leading element).
    """

    hyperparams = {"lr": 1e-3, "momentum": 0.9, "inner_lr": 0.1}
    invariants = (same_structure, finite_in_finite_out)

    def build(self):
        return chain(DeepMomentum(), ScaleByLr())

    def check_hyper(self, hyper):
        check_nonneg(hyper, "lr", "inner_lr")
        check_unit(hyper, "momentum")
