"""``attention``: causal softmax attention with RoPE, optional sliding window,
and a KV cache carried in ``state`` for streaming."""

from __future__ import annotations


import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlframe.interfaces import Block
from nlframe.spec import in_range, positive_int


def rope(x: Tensor, start: int, base: float) -> Tensor:
    """Rotary position embedding of ``x (B, H, T, Dh)`` at positions ``start..start+T-1``.

    Pairs ``(x_i, x_{i+Dh/2})`` are rotated by the angle ``p · base^(−2i/Dh)``
    (Su et al., RoFormer, arXiv 2104.09864, eq. 34, rotate-half layout), so
    ``⟨rope(q, p), rope(k, s)⟩`` depends on ``p − s`` only.
    """
    half = x.shape[-1] // 2
    inv_freq = base ** (-torch.arange(half, dtype=torch.float64, device=x.device) / half)  # (Dh/2,)
    pos = torch.arange(start, start + x.shape[-2], dtype=torch.float64, device=x.device)
    angle = pos[:, None] * inv_freq  # (T, Dh/2)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Attention(Block):
    """Causal multi-head attention ``y_t = W_o Σ_{s≤t, t−s<w} softmax_s(q_t·k_s/√Dh) v_s``.

    Queries and keys carry RoPE at their absolute positions; ``window = w``
    restricts each query to the last ``w`` keys (itself included). In Nested
    Learning terms (arXiv 2512.24695, §2) attention is the non-parametric
    associative memory whose "chunk" is the whole context. Computed by
    ``F.scaled_dot_product_attention``.

    State (streaming): ``{"k", "v": (B, H, S, Dh), "pos": int}`` — the rotated
    keys and values still visible to future queries (all of them, or the last
    ``w − 1`` with a window) and the number of tokens seen. Feeding a sequence
    in pieces with the returned state equals one pass.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        heads: int = attrs.field(default=4, validator=positive_int)
        head_dim: int | None = attrs.field(default=None, validator=attrs.validators.optional(positive_int))
        """Width of one head; default ``dim // heads``."""
        window: int | None = attrs.field(default=None, validator=attrs.validators.optional(positive_int))
        """Sliding window: each query sees at most this many keys (itself included)."""
        rope_base: float = attrs.field(default=10000.0, validator=in_range(1.0, 1e9))
        bias: bool = False

        def check(self, dim: int) -> None:
            if self.head_dim is None and dim % self.heads:
                raise ValueError(f"heads: {self.heads} heads do not divide dim {dim}; "
                                 "change heads or set head_dim")
            head_dim = self.head_dim or dim // self.heads
            if head_dim % 2:
                field = "head_dim" if self.head_dim else "heads"
                raise ValueError(f"{field}: RoPE needs an even head dim, got {head_dim} "
                                 f"(dim {dim}, heads {self.heads})")

    def __init__(self, config: Config, dim: int) -> None:
        super().__init__()
        config.check(dim)
        self.config, self.dim = config, dim
        self.heads = config.heads
        self.head_dim = config.head_dim or dim // config.heads
        inner = self.heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=config.bias)
        self.out = nn.Linear(inner, dim, bias=config.bias)

    def _mask(self, t: int, s: int, pos: int, device: torch.device) -> Tensor:
        """Boolean ``(T, S)`` mask: query at ``pos + i`` sees key at ``pos + t − s + j``
        when it is not in the future and within the window."""
        qpos = torch.arange(pos, pos + t, device=device)[:, None]
        kpos = torch.arange(pos + t - s, pos + t, device=device)[None, :]
        mask = kpos <= qpos
        if self.config.window is not None:
            mask = mask & (qpos - kpos < self.config.window)
        return mask

    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:  # type: ignore[override]
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"attention: x must have shape (B, T, {self.dim}), got {tuple(x.shape)}")
        b, t, _ = x.shape
        pos = 0 if state is None else int(state["pos"])
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = rope(q, pos, self.config.rope_base), rope(k, pos, self.config.rope_base)  # (B, H, T, Dh)
        if state is not None:
            if state["k"].shape[0] != b:
                raise ValueError(f"attention: state is for batch {state['k'].shape[0]}, x has batch {b}")
            k, v = torch.cat((state["k"], k), dim=2), torch.cat((state["v"], v), dim=2)
        s = k.shape[2]
        if t == 0:
            y = x.new_zeros(b, self.heads, 0, self.head_dim)
        elif s == t and self.config.window is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self._mask(t, s, pos, x.device))
        y = self.out(y.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))
        keep = s if self.config.window is None else min(s, self.config.window - 1)
        new_state = {"k": k[:, :, s - keep:], "v": v[:, :, s - keep:], "pos": pos + t}
        return y, new_state
