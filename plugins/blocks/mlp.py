"""``mlp``: the gated feed-forward block (SwiGLU / GEGLU)."""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch.nn.functional as F
from torch import Tensor, nn

from nlframe.interfaces import Block
from nlframe.spec import one_of, positive_int


def default_hidden(dim: int, multiple_of: int) -> int:
    """``≈ 8/3 · dim`` rounded up to a multiple of ``multiple_of`` (same parameter
    count as a 4·dim ungated MLP)."""
    return multiple_of * math.ceil(8 * dim / 3 / multiple_of)


class MLP(Block):
    """SwiGLU feed-forward: ``y = W_down (σ(W_gate x) ⊙ W_up x)``, σ = SiLU (or GELU).

    Shazeer, "GLU Variants Improve Transformer" (2020), FFN_SwiGLU; in Nested
    Learning terms (arXiv 2512.24695, §3) a level whose weights are written only
    by the outer (training) optimizer. Stateless: ``state`` passes through.
    Shapes: ``x (B, T, dim) → y (B, T, dim)``, hidden width ``hidden``.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        hidden: int | None = attrs.field(default=None, validator=attrs.validators.optional(positive_int))
        """Hidden width; default ``≈ 8/3·dim`` rounded up to ``multiple_of``."""
        multiple_of: int = attrs.field(default=8, validator=positive_int)
        activation: str = attrs.field(default="silu", validator=one_of("silu", "gelu"))
        bias: bool = False

    def __init__(self, config: Config, dim: int) -> None:
        super().__init__()
        self.config, self.dim = config, dim
        self.hidden = config.hidden or default_hidden(dim, config.multiple_of)
        self.gate_up = nn.Linear(dim, 2 * self.hidden, bias=config.bias)  # [W_gate; W_up]
        self.down = nn.Linear(self.hidden, dim, bias=config.bias)
        self._act = F.silu if config.activation == "silu" else F.gelu

    def forward(self, x: Tensor, state: Any = None) -> tuple[Tensor, Any]:  # type: ignore[override]
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"mlp: x must have shape (B, T, {self.dim}), got {tuple(x.shape)}")
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # (B, T, hidden) each
        return self.down(self._act(gate) * up), state
