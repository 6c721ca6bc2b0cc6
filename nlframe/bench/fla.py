"""flash-linear-attention's chunk kernels as the outside yardstick of ``nlframe bench scan``.

Two rows, each given inputs under which it computes **the same function** as the
scan it is timed against (linear memory, ``l2``, chunk size 1, ``η = 0``, read after
write; DESIGN §2):

    W_t = W_{t−1}((1 − α_t) I − θ_t k_t k_tᵀ) + θ_t v_t k_tᵀ,   y_t = W_t q_t

* ``fla-delta-rule`` — ``fla.ops.delta_rule.chunk_delta_rule`` with ``β = θ``; it
  has no decay, so it runs only where every ``α_t = 0`` (``--decay 0``).
* ``fla-gated-delta-rule`` — ``fla.ops.gated_delta_rule.chunk_gated_delta_rule``,
  whose step is ``S ← γS``, ``S ← S + β k (v − Sᵀk)ᵀ`` (state ``S = Wᵀ``), i.e.
  ``W_t = γW − βγ W k kᵀ + β v kᵀ``. With ``γ = 1 − α`` (``g = log(1 − α)``),
  ``β = θ / (1 − α)`` and values ``(1 − α) v`` that is exactly the rule above.

Both take ``[B, T, H, D]`` inputs and the state ``[B, H, Dk, Dv]``; the inputs are
laid out once, outside the timed calls (a user of the kernels holds them so), and
the read scale is 1. The kernels are Triton GPU kernels and reject float32, so the
rows run only on a CUDA device in float16 or bfloat16 (``--dtype``).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch

KERNELS = {
    "fla-delta-rule": ("fla.ops.delta_rule", "chunk_delta_rule"),
    "fla-gated-delta-rule": ("fla.ops.gated_delta_rule", "chunk_gated_delta_rule"),
}
"""Row name → (module, function) of flash-linear-attention."""

DEVICE_TYPES = ("cuda",)
"""Device types the kernels run on."""


def kernel(name: str) -> Callable[..., Any]:
    """flash-linear-attention's function behind row ``name`` (``ImportError`` if absent)."""
    module, function = KERNELS[name]
    return getattr(importlib.import_module(module), function)


def unavailable_reason(name: str, *, memory: str, objective: str, rule: str, chunk_size: int,
                       decay: float, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why row ``name`` cannot time this workload (``None``: it can)."""
    if (memory, objective, rule, chunk_size) != ("linear", "l2", "gd", 1):
        return ("computes the delta rule only: needs --memory linear --objective l2 --rule gd "
                "--chunk-size 1")
    if name == "fla-delta-rule" and decay != 0:
        return "has no decay: needs --decay 0 (fla-gated-delta-rule takes the decay)"
    if device.type not in DEVICE_TYPES:
        return f"its kernels run on {', '.join(DEVICE_TYPES)} devices, not {device.type}"
    if dtype == torch.float32:
        return "its kernels reject float32: use --dtype bfloat16 or float16"
    try:
        kernel(name)
    except ImportError as err:
        return f"flash-linear-attention is not installed here ({err})"
    return None


def to_fla(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, T, ...)`` → ``(B, T, H, ...)``, contiguous."""
    return x.transpose(1, 2).contiguous()


class FlaCall:
    """Row ``name`` on one workload's tensors: ``call(mode)`` as in :class:`scan.Workload`."""

    def __init__(self, name: str, tensors: dict[str, torch.Tensor], W0: torch.Tensor,
                 weight: torch.Tensor):
        self.name, self.fn = name, kernel(name)
        lr, decay = tensors["lr"], tensors["decay"]
        keep = 1 - decay
        self.inputs = {"q": to_fla(tensors["q"]), "k": to_fla(tensors["k"])}
        if name == "fla-gated-delta-rule":
            self.inputs["v"] = to_fla(tensors["v"] * keep[..., None])
            # the log-space gate in at least float32, as the kernels accumulate it
            self.inputs["g"] = to_fla(torch.log1p(-decay.to(torch.promote_types(decay.dtype,
                                                                                torch.float32))))
            self.inputs["beta"] = to_fla(lr / keep)
        else:
            self.inputs["v"] = to_fla(tensors["v"])
            self.inputs["beta"] = to_fla(lr)
        self.W0, self.weight = W0, weight  # W0: (Dv, Dk); weight: (B, H, T, Dv)
        self.B, self.H = tensors["q"].shape[:2]

    def forward(self, inputs: dict[str, torch.Tensor], W0: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``y (B, H, T, Dv)`` and the final ``W (B, H, Dv, Dk)``."""
        h0 = W0.expand(self.B, self.H, *W0.shape).transpose(-1, -2).contiguous()
        o, ht = self.fn(**inputs, scale=1.0, initial_state=h0, output_final_state=True)
        return o.transpose(1, 2), ht.transpose(-1, -2)

    def call(self, mode: str, sync: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            train = mode == "train"
            inputs = {n: x.detach().requires_grad_(train) for n, x in self.inputs.items()}
            W0 = self.W0.detach().requires_grad_(train)
            with torch.set_grad_enabled(train):
                y, _ = self.forward(inputs, W0)
                if train:
                    (y * self.weight).sum().backward()
            sync()

        return run

    def output(self) -> torch.Tensor:
        """The forward read ``y (B, H, T, Dv)`` (no gradients)."""
        with torch.no_grad():
            return self.forward(self.inputs, self.W0)[0]
