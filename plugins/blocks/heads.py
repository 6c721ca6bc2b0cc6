"""The per-head q, k, v projection shared by the scan-level blocks
(``linear-attention``, ``deltanet``, ``titans``)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .common import ShortConv, split_heads

__all__ = ["check_heads", "QKVHeads"]


def check_heads(config: Any, dim: int) -> None:
    """Config checks of a block with ``heads``, ``head_dim`` and ``conv_size`` fields."""
    if config.head_dim is None and dim % config.heads:
        raise ValueError(f"heads: {config.heads} heads do not divide dim {dim}; "
                         "change heads or set head_dim")
    if config.conv_size == 1:
        raise ValueError("conv_size: a convolution needs width >= 2 (0 turns it off)")


class QKVHeads:
    """``q, k, v = split_heads(conv(W_qkv x))``: ``(B, T, dim) → 3 × (B, H, T, Dh)``.

    A mixin for blocks: :meth:`init_qkv` creates ``self.qkv`` (the fused
    projection) and ``self.conv`` (the optional short causal convolution);
    :meth:`project_qkv` applies them and carries the convolution's state.
    """

    qkv: nn.Linear
    conv: ShortConv | None

    def init_qkv(self, dim: int, config: Any) -> int:
        """Create the layers; returns the inner width ``H·Dh``."""
        self.heads = config.heads
        self.head_dim = config.head_dim or dim // config.heads
        inner = self.heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.conv = ShortConv(3 * inner, config.conv_size) if config.conv_size else None
        return inner

    def project_qkv(self, x: Tensor, conv_state: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Any]:
        """``(q, k, v, conv_state)`` for ``x (B, T, dim)``; each of q, k, v is ``(B, H, T, Dh)``."""
        qkv = self.qkv(x)  # (B, T, 3·H·Dh)
        if self.conv is not None:
            qkv, conv_state = self.conv(qkv, conv_state)
        q, k, v = (split_heads(t, self.heads) for t in qkv.chunk(3, dim=-1))
        return q, k, v, conv_state
