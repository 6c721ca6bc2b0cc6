"""``linear-attention``: multi-head linear attention as a scan level (linear memory,
dot-product surprise)."""

from __future__ import annotations


import attrs
from torch import Tensor, nn

from nlframe.interfaces import Block
from nlframe.level import ContextFlow, Level
from nlframe.spec import plugin_name, positive_int

from .common import HeadGate, check_input, l2norm, merge_heads
from .heads import QKVHeads, check_heads


class LinearAttention(QKVHeads, Block):
    """Linear attention ``y_t = W_o · W_t q_t``, ``W_t = W_{t−1} + θ_t v_t k_tᵀ`` per head.

    One gradient step on the dot-product objective ``ℓ = −⟨W k_t, v_t⟩`` with
    ``α = η = 0`` (NL arXiv 2512.24695 eqs. 17–18: linear attention is an
    associative memory trained by gradient descent; Titans arXiv 2501.00663
    eqs. 4–5). ``θ_t = 1`` or, with ``learned_lr``, ``θ_t = σ(w_h·x_t + b_h)`` per head.
    The dot objective's gradient does not depend on ``W``, so ``chunk_size`` only
    changes speed, never results.

    Shapes: ``x (B, T, dim) → y (B, T, dim)``; ``q, k, v (B, H, T, Dh)``.
    State: ``{"memory": MemoryState, "conv": (B, w−1, 3·H·Dh) | None}``.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        heads: int = attrs.field(default=4, validator=positive_int)
        head_dim: int | None = attrs.field(default=None, validator=attrs.validators.optional(positive_int))
        """Width of one head; default ``dim // heads``."""
        qk_norm: bool = True
        """L2-normalise queries and keys (keeps the unnormalised sum bounded)."""
        learned_lr: bool = False
        """Data-dependent write strength ``θ_t = σ(w·x_t + b)`` instead of ``θ = 1``."""
        conv_size: int = attrs.field(default=0, validator=attrs.validators.ge(0))
        """Width of the short causal convolution on q, k, v (0: none)."""
        chunk_size: int = attrs.field(default=64, validator=positive_int)
        backend: str = attrs.field(default="auto", validator=plugin_name("backend", extra=("auto",)))

        def check(self, dim: int) -> None:
            check_heads(self, dim)

    def __init__(self, config: Config, dim: int) -> None:
        super().__init__()
        config.check(dim)
        self.config, self.dim = config, dim
        inner = self.init_qkv(dim, config)
        self.lr = HeadGate(dim, self.heads, init=0.5) if config.learned_lr else None
        self.out_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.out = nn.Linear(inner, dim, bias=False)
        self.level = Level.build("linear", "dot", "momentum", dim_k=self.head_dim,
                                 dim_v=self.head_dim, chunk_size=config.chunk_size,
                                 backend=config.backend, name="linear-attention.memory")
        self.memory = self.level.memory
        self._surprise: Tensor | None = None

    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:  # type: ignore[override]
        check_input("linear-attention", x, self.dim)
        state = state or {}
        q, k, v, conv = self.project_qkv(x, state.get("conv"))  # (B, H, T, Dh) each
        if self.config.qk_norm:
            q, k = l2norm(q), l2norm(k)
        lr = self.lr(x) if self.lr is not None else 1.0  # θ_t (B, H, T) or 1
        mem = state.get("memory")
        if mem is None:
            mem = self.level.init_state(batch=x.shape[0], heads=self.heads, dtype=x.dtype,
                                        device=x.device)
        # W_t = W_{t-1} + θ_t v_t k_tᵀ,  y_t = W_t q_t   (NL eq. 18)
        y, mem = self.level.scan(ContextFlow(q, k, v, lr=lr), mem)
        self._surprise = mem.surprise
        y = self.out(merge_heads(self.out_norm(y)))
        return y, {"memory": mem, "conv": conv}

    def surprise(self) -> dict[str, Tensor]:
        """Mean ``‖∂ℓ/∂pred‖ = ‖v_t‖`` of the last forward (dot objective)."""
        return {} if self._surprise is None else {"memory": self._surprise.mean()}
