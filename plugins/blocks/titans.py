"""``titans``: the Titans neural long-term memory (deep MLP memory written by
momentum + decay at test time), standalone or as Memory-as-Layer (MAL)."""

from __future__ import annotations

from typing import Any

import attrs
from torch import Tensor, nn

from nlframe.interfaces import Block
from nlframe.level import ContextFlow
from nlframe.spec import (MemoryRef, ObjectiveRef, OptimizerRef, in_range, one_of, plugin_name,
                          positive_int)

from .attention import Attention
from .common import (HeadGate, check_input, l2norm, learned_init, make_level, merge_heads,
                     spec_field)
from .heads import QKVHeads, check_heads

_unit_open = in_range(0.0, 1.0, lo_open=True, hi_open=True)


class Titans(QKVHeads, Block):
    """Titans neural memory ``y_t = W_o · M_{W_t}(q_t)``, per head (arXiv 2501.00663 §3).

    Per head, with ``k_t, v_t, q_t`` linear maps of ``x_t`` (eq. 11; q, k
    L2-normalised) and the chunk form of the scan (every gradient of a chunk at
    its start params ``W_{cC}``, Titans §3.2 eq. 16)::

        g_t = ∇_W ℓ(M_{W_{cC}}(k_t), v_t)        ℓ = l2 (eq. 12) or any objective plugin
        S_t = η_t S_{t−1} − θ_t g_t               (eq. 10, surprise momentum)
        W_t = (1 − α_t) W_{t−1} + S_t             (eq. 13, forgetting)
        y_t = M_{W_t}(q_t)                        (eq. 15, read after write)

    with data-dependent gates per head ``θ_t = lr_max·σ(·)``, ``α_t = σ(·)``,
    ``η_t = σ(·)`` (linear maps of ``x_t``). The memory (default a 2-layer MLP,
    ``hidden`` configurable) starts every sequence from learned parameters
    ``W_0`` (one set per head) that the outer level trains.

    ``layout = "mal"`` (Memory as a Layer, Titans §4.3 eqs. 29–31, without the
    persistent-memory tokens): ``x ← x + memory(norm(x))`` then
    ``x ← x + SWA(norm(x))`` with the ``attention`` block (sliding window
    ``window``); the block then does its own norms and residuals.

    State: ``{"memory": MemoryState, "conv": Tensor | None, "attention": dict | None}``.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        heads: int = attrs.field(default=4, validator=positive_int)
        head_dim: int | None = attrs.field(default=None, validator=attrs.validators.optional(positive_int))
        memory: MemoryRef = attrs.field(
            factory=lambda: MemoryRef("mlp"), converter=spec_field(MemoryRef))
        """The neural memory: ``"mlp"`` (hidden 4·head_dim), ``{type = "mlp", hidden = 64}``, …"""
        objective: ObjectiveRef = attrs.field(
            factory=lambda: ObjectiveRef("l2"), converter=spec_field(ObjectiveRef))
        """Surprise objective (``l2`` as in Titans; ``huber``, ``lp``, ``dot`` also work)."""
        chunk_size: int = attrs.field(default=16, validator=positive_int)
        lr_max: float = attrs.field(default=0.1, validator=in_range(0.0, 100.0, lo_open=True))
        """θ_t = lr_max · σ(w·x_t + b). The in-chunk steps add up (Σ_{i≤j} θ_i g_i
        at the chunk start), so keep ``lr_max · chunk_size`` of order 1."""
        lr_init: float = attrs.field(default=0.1, validator=_unit_open)
        """Initial typical θ_t / lr_max (sets the gate's bias)."""
        momentum: bool = True
        """Data-dependent surprise momentum η_t (eq. 10); false: η = 0."""
        momentum_init: float = attrs.field(default=0.9, validator=_unit_open)
        decay: bool = True
        """Data-dependent forgetting α_t (eq. 13); false: α = 0."""
        decay_init: float = attrs.field(default=0.01, validator=_unit_open)
        conv_size: int = attrs.field(default=4, validator=attrs.validators.ge(0))
        layout: str = attrs.field(default="standalone", validator=one_of("standalone", "mal"))
        window: int = attrs.field(default=64, validator=positive_int)
        """MAL: sliding-window size of the attention."""
        attention_heads: int | None = attrs.field(default=None,
                                                  validator=attrs.validators.optional(positive_int))
        """MAL: heads of the attention (default ``heads``)."""
        grad_clip: float = attrs.field(default=1.0, validator=in_range(0.0, 1e6))
        """Per-token clip of the memory's ``‖∂ℓ/∂pred_t‖`` (inner-level stability; 0: off)."""
        momentum_max: float = attrs.field(default=0.9, validator=in_range(0.0, 1.0, lo_open=True,
                                                                          hi_open=True))
        """Bound of the momentum gate: η_t = momentum_max · σ(·) (the in-chunk steps of
        momentum add up to θ/(1 − η); an unbounded η lets them grow without limit)."""
        backend: str = attrs.field(default="auto", validator=plugin_name("backend", extra=("auto",)))

        def check(self, dim: int) -> None:
            check_heads(self, dim)
            head_dim = self.head_dim or dim // self.heads
            try:
                self.memory.build(head_dim, head_dim)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"memory: {exc}") from None
            if self.layout == "mal":
                try:
                    Attention.Config(heads=self.attention_heads or self.heads,
                                     window=self.window).check(dim)
                except ValueError as exc:
                    field = "attention_heads" if self.attention_heads else "heads"
                    raise ValueError(f"{field}: attention: {str(exc).split(': ', 1)[-1]}") from None

    def __init__(self, config: Config, dim: int) -> None:
        super().__init__()
        config.check(dim)
        self.config, self.dim = config, dim
        inner = self.init_qkv(dim, config)
        self.lr = HeadGate(dim, self.heads, init=config.lr_init, scale=config.lr_max)
        self.decay = HeadGate(dim, self.heads, init=config.decay_init) if config.decay else None
        self.momentum = HeadGate(dim, self.heads, init=min(config.momentum_init / config.momentum_max,
                                                           0.999),
                                 scale=config.momentum_max) if config.momentum else None
        self.level, _ = make_level(config.memory, config.objective, OptimizerRef("momentum"),
                                   self.head_dim, self.head_dim, chunk_size=config.chunk_size,
                                   grad_clip=config.grad_clip or None, backend=config.backend,
                                   name="titans.memory")
        self.memory = self.level.memory
        self.init = learned_init(self.memory, self.heads)  # W_0 per head: name → (H, *shape)
        self.out_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.out = nn.Linear(inner, dim, bias=False)
        self.handles_residual = config.layout == "mal"
        if self.handles_residual:
            self.norm_mem, self.norm_attn = nn.RMSNorm(dim, eps=1e-6), nn.RMSNorm(dim, eps=1e-6)
            self.attn = Attention(Attention.Config(heads=config.attention_heads or config.heads,
                                                   window=config.window), dim)
        self._surprise: Tensor | None = None

    def _memory(self, x: Tensor, state: dict) -> tuple[Tensor, dict]:
        """The neural-memory layer: ``x (B, T, dim) → (B, T, dim)``."""
        q, k, v, conv = self.project_qkv(x, state.get("conv"))  # (B, H, T, Dh) each
        q, k = l2norm(q), l2norm(k)
        gates: dict[str, Any] = {"lr": self.lr(x)}  # θ_t (B, H, T)
        gates["decay"] = self.decay(x) if self.decay is not None else 0.0  # α_t
        gates["momentum"] = self.momentum(x) if self.momentum is not None else 0.0  # η_t
        mem = state.get("memory")
        if mem is None:
            mem = self.level.init_state(batch=x.shape[0], heads=self.heads, params=dict(self.init))
        y, mem = self.level.scan(ContextFlow(q, k, v, **gates), mem)
        self._surprise = mem.surprise
        return self.out(merge_heads(self.out_norm(y))), {"memory": mem, "conv": conv}

    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:  # type: ignore[override]
        check_input("titans", x, self.dim)
        state = state or {}
        if not self.handles_residual:
            return self._memory(x, state)
        y, new = self._memory(self.norm_mem(x), state)
        x = x + y  # Titans eq. 30: the memory layer
        y, new["attention"] = self.attn(self.norm_attn(x), state.get("attention"))
        return x + y, new  # eq. 31: sliding-window attention on the memory's output

    def surprise(self) -> dict[str, Tensor]:
        """Mean write-time ``‖∂ℓ/∂pred‖`` of the last forward (the memory's surprise)."""
        return {} if self._surprise is None else {"memory": self._surprise.mean()}
