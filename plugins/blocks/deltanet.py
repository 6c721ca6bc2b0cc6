"""``deltanet``: the (gated) delta rule as a scan level (linear memory, L2 surprise,
chunk size 1)."""

from __future__ import annotations

from typing import Any

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nlframe.interfaces import Block
from nlframe.level import ContextFlow, Level
from nlframe.spec import in_range, plugin_name, positive_int

from .common import HeadGate, check_input, gate_linear, l2norm, merge_heads
from .heads import QKVHeads, check_heads


class DeltaNet(QKVHeads, Block):
    """Delta rule ``W_t = W_{t−1}((1−α_t) I − θ_t k_t k_tᵀ) + θ_t v_t k_tᵀ``, ``y_t = W_o · W_t q_t``.

    One gradient step per token on ``ℓ = ½‖W k_t − v_t‖²`` (DeltaNet arXiv
    2406.06484 eq. 1 with β_t = θ_t; the scan contract with a linear memory,
    ``l2`` and chunk size 1). ``q, k`` are L2-normalised per head and
    ``θ_t = σ(w_h·x_t + b_h)`` per head. With ``gate = true`` the memory also
    forgets: ``1 − α_t = exp(−softplus(u_h·x_t + c_h))`` (the data-dependent decay
    of Gated DeltaNet arXiv 2412.06464 eq. 10, applied here as weight decay on
    ``W_{t−1}`` before the delta step — the retention form of NL arXiv
    2512.24695 / Titans eq. 13 — so the gate does not scale the new write).
    Computed by the chunked backend's WY / UT-transform tiles.

    State: ``{"memory": MemoryState, "conv": (B, w−1, 3·H·Dh) | None}``.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        heads: int = attrs.field(default=4, validator=positive_int)
        head_dim: int | None = attrs.field(default=None, validator=attrs.validators.optional(positive_int))
        gate: bool = False
        """Gated DeltaNet: a data-dependent forget gate α_t per head."""
        retention: float = attrs.field(default=0.99, validator=in_range(0.0, 1.0, lo_open=True,
                                                                       hi_open=True))
        """Initial typical retention ``1 − α`` of the gate (sets its bias)."""
        lr_init: float = attrs.field(default=0.5, validator=in_range(0.0, 1.0, lo_open=True,
                                                                    hi_open=True))
        """Initial typical write strength θ (sets the bias of σ(w·x + b))."""
        conv_size: int = attrs.field(default=4, validator=attrs.validators.ge(0))
        """Width of the short causal convolution on q, k, v (0: none)."""
        backend: str = attrs.field(default="auto", validator=plugin_name("backend", extra=("auto",)))

        def check(self, dim: int) -> None:
            check_heads(self, dim)

    def __init__(self, config: Config, dim: int) -> None:
        super().__init__()
        config.check(dim)
        self.config, self.dim = config, dim
        inner = self.init_qkv(dim, config)
        self.lr = HeadGate(dim, self.heads, init=config.lr_init)
        self.decay = None
        if config.gate:  # softplus(b) = −log(retention)
            self.decay = nn.Linear(dim, self.heads)
            nn.init.normal_(self.decay.weight, std=0.02)
            target = -torch.log(torch.tensor(config.retention))
            nn.init.constant_(self.decay.bias, float(torch.log(torch.expm1(target))))
        self.out_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.out = nn.Linear(inner, dim, bias=False)
        self.level = Level.build("linear", "l2", "momentum", dim_k=self.head_dim,
                                 dim_v=self.head_dim, chunk_size=1, backend=config.backend,
                                 name="deltanet.memory")
        self.memory = self.level.memory
        self._surprise: Tensor | None = None

    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:  # type: ignore[override]
        check_input("deltanet", x, self.dim)
        state = state or {}
        q, k, v, conv = self.project_qkv(x, state.get("conv"))  # (B, H, T, Dh) each
        q, k = l2norm(q), l2norm(k)
        lr = self.lr(x)  # θ_t (B, H, T)
        decay: Any = 0.0
        if self.decay is not None:  # α_t = 1 − exp(−softplus(u·x + c))   (B, H, T)
            decay = -torch.expm1(-F.softplus(gate_linear(self.decay, x))).transpose(1, 2)
        mem = state.get("memory")
        if mem is None:
            mem = self.level.init_state(batch=x.shape[0], heads=self.heads, dtype=x.dtype,
                                        device=x.device)
        # W_t = (1 − α_t) W_{t−1} − θ_t (W_{t−1} k_t − v_t) k_tᵀ,  y_t = W_t q_t
        y, mem = self.level.scan(ContextFlow(q, k, v, lr=lr, decay=decay), mem)
        self._surprise = mem.surprise
        y = self.out(merge_heads(self.out_norm(y)))
        return y, {"memory": mem, "conv": conv}

    def surprise(self) -> dict[str, Tensor]:
        """Mean write-time error ``‖W_{t−1} k_t − v_t‖`` of the last forward."""
        return {} if self._surprise is None else {"memory": self._surprise.mean()}
