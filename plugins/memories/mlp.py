"""Two-layer MLP memories ``M(x) = W2 σ(W1 x)`` and ``M(x) = x + W2 σ(W1 x)``."""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import torch
from torch import Tensor

from nlframe.interfaces import Memory, Params

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _gelu(z: Tensor) -> Tensor:
    return torch.nn.functional.gelu(z)  # exact: z Φ(z) = ½ z (1 + erf(z/√2))


def _gelu_grad(z: Tensor) -> Tensor:
    # d/dz z Φ(z) = Φ(z) + z φ(z)
    return 0.5 * (1.0 + torch.erf(z * _SQRT_HALF)) + z * torch.exp(-0.5 * z * z) * _INV_SQRT_2PI


def _silu_grad(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1.0 + z * (1.0 - s))


def _sigmoid_grad(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1.0 - s)


def _gelu_grad2(z: Tensor) -> Tensor:
    # d/dz (Φ(z) + z φ(z)) = 2 φ(z) − z² φ(z)
    return torch.exp(-0.5 * z * z).mul_(2.0 - z * z).mul_(_INV_SQRT_2PI)


def _silu_grad2(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))


def _sigmoid_grad2(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1.0 - s) * (1.0 - 2.0 * s)


def _tanh_grad2(z: Tensor) -> Tensor:
    t = torch.tanh(z)
    return -2.0 * t * (1.0 - t * t)


ACTIVATIONS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "gelu": (_gelu, _gelu_grad),
    "silu": (torch.nn.functional.silu, _silu_grad),
    "relu": (torch.relu, lambda z: (z > 0).to(z.dtype)),
    "tanh": (torch.tanh, lambda z: 1.0 - torch.tanh(z) ** 2),
    "sigmoid": (torch.sigmoid, _sigmoid_grad),
    "identity": (lambda z: z, torch.ones_like),
}
"""Activation name → ``(σ, σ′)``; σ′ in closed form (matches autograd, also at 0 for relu)."""

SECOND_DERIVATIVES: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": _gelu_grad2, "silu": _silu_grad2, "relu": torch.zeros_like, "tanh": _tanh_grad2,
    "sigmoid": _sigmoid_grad2, "identity": torch.zeros_like,
}
"""Activation name → σ″ in closed form, for the hand-written backward passes of the chunked
backend's fused tiles (a memory without ``activation_grad2`` gets σ″ by autograd of σ′)."""


class _TwoLayer(Memory):
    """Shared construction of the two MLP memories (not registered)."""

    name = ""

    def __init__(self, dim_k: int, dim_v: int, *, hidden: int | None = None,
                 activation: str = "gelu", seed: int = 0, **unknown: Any) -> None:
        if unknown:
            raise TypeError(f"memory {self.name!r}: unknown option(s) {sorted(unknown)}; "
                            "accepted: ['activation', 'hidden', 'seed']")
        if int(dim_k) < 1 or int(dim_v) < 1:
            raise ValueError(f"memory {self.name!r}: dim_k and dim_v must be >= 1, "
                             f"got {dim_k}, {dim_v}")
        super().__init__(dim_k, dim_v)
        hidden = 4 * self.dim_k if hidden is None else hidden
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"memory {self.name!r}: hidden must be a positive int, got {hidden!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"memory {self.name!r}: unknown activation {activation!r}; "
                             f"choose from {sorted(ACTIVATIONS)}")
        self.dim_h = hidden
        self.activation_name = activation
        self.activation, self.activation_grad = ACTIVATIONS[activation]
        self.activation_grad2 = SECOND_DERIVATIVES[activation]
        self.seed = int(seed)

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"W1": (self.dim_h, self.dim_k), "W2": (self.dim_v, self.dim_h)}

    def init_params(self, *, generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> Params:
        """LeCun-normal ``W1 ~ N(0, 1/Dk)``, ``W2 ~ N(0, 1/Dh)``, drawn on the CPU from
        ``generator`` (default: a generator seeded with ``seed``), so ``state=None`` is
        deterministic and identical on every device."""
        if generator is None:
            generator = torch.Generator().manual_seed(self.seed)
        w1 = torch.randn(self.dim_h, self.dim_k, generator=generator, dtype=torch.float64)
        w2 = torch.randn(self.dim_v, self.dim_h, generator=generator, dtype=torch.float64)
        return {"W1": (w1 / math.sqrt(self.dim_k)).to(dtype=dtype, device=device),
                "W2": (w2 / math.sqrt(self.dim_h)).to(dtype=dtype, device=device)}

    def hidden_read(self, params: Params, x: Tensor) -> Tensor:
        """``W2 σ(W1 x)``: W1 ``(*lead, Dh, Dk)``, W2 ``(*lead, Dv, Dh)``, x ``(*lead, N, Dk)``."""
        h = self.activation(x @ params["W1"].transpose(-1, -2))  # (*lead, N, Dh)
        return h @ params["W2"].transpose(-1, -2)  # (*lead, N, Dv)

    def layer_inputs(self, params: Params, x: Tensor) -> dict[str, Tensor]:
        """``{"W1": x, "W2": σ(W1 x)}``: each weight matrix's input when reading ``x``."""
        return {"W1": x, "W2": self.activation(x @ params["W1"].transpose(-1, -2))}


# the options a spec may set, for its key-path errors (``**unknown`` only words the direct-call error)
_TwoLayer.__signature__ = inspect.signature(_TwoLayer.__init__).replace(parameters=[
    p for p in inspect.signature(_TwoLayer.__init__).parameters.values()
    if p.name != "self" and p.kind is not p.VAR_KEYWORD])


class MLPMemory(_TwoLayer):
    """Two-layer MLP memory ``M(x) = W2 σ(W1 x)``, ``W1: (Dh, Dk)``, ``W2: (Dv, Dh)``
    (Titans arXiv 2501.00663 §3.1, deep memory; TTT-MLP arXiv 2407.04620).

    Options: ``hidden`` Dh (default ``4·Dk``), ``activation`` σ (default exact
    ``"gelu"``; also ``"silu"``, ``"relu"``, ``"tanh"``, ``"sigmoid"``,
    ``"identity"``), ``seed`` of the default initialisation (see :meth:`init_params`).
    """

    structure = "mlp"
    name = "mlp"

    def read(self, params: Params, x: Tensor) -> Tensor:
        return self.hidden_read(params, x)


class ResidualMLPMemory(_TwoLayer):
    """Residual MLP memory ``M(x) = x + W2 σ(W1 x)`` (TTT arXiv 2407.04620, the residual
    form of TTT-MLP without its layer norm); needs ``Dk = Dv``.

    Same options as ``mlp``.
    """

    structure = "residual-mlp"
    name = "residual-mlp"

    def __init__(self, dim_k: int, dim_v: int, **kwargs: Any) -> None:
        if int(dim_k) != int(dim_v):
            raise ValueError(f"memory 'residual-mlp' needs dim_k == dim_v (x + W2 σ(W1 x)); "
                             f"got dim_k={dim_k}, dim_v={dim_v}")
        super().__init__(dim_k, dim_v, **kwargs)

    def read(self, params: Params, x: Tensor) -> Tensor:
        return x + self.hidden_read(params, x)
