"""``self-mod-titans``: the self-modifying (self-referential) Titans of Nested
Learning — keys, values, learning rates and decays produced by memories that are
themselves written in context (NL arXiv 2512.24695 §8.1–8.2)."""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import Tensor, nn

from nlframe.interfaces import Block
from nlframe.level import tree_map
from nlframe.scan import initial_state, make_rule, memory_scan
from nlframe.spec import (MemoryRef, ObjectiveRef, OptimizerRef, in_range, plugin_name,
                          positive_int)

from .common import (BoundaryLevel, ShortConv, check_input, l2norm, learned_init, merge_heads,
                     segments, split_at, split_heads)


class SelfModTitans(Block):
    """Self-modifying Titans (NL arXiv 2512.24695 eqs. 86–90): every projection is a memory.

    For input ``x_t`` (after a short causal convolution, then L2-normalised, as
    DGD's closed form assumes ``‖x_t‖`` constant, NL eq. 57), per chunk of the
    projection memories (``proj_chunk_size`` tokens, all read at the params of
    the chunk start — eq. 90)::

        k_t = M_k(x_t),  v_t = M_v(x_t),  e_t = M_η(x_t),  a_t = M_α(x_t)   (eq. 86; q_t = x_t W_q,
                                                                            or M_q(x_t) with adaptive_q)
        η_t = σ(⟨u_η, e_t⟩ + b_η),  α_t = σ(⟨u_α, a_t⟩ + b_α)               (one per head)
        v̂_□,t = M_□(v_t)                                                    (self-generated values, eq. 87)

    with every projection memory a residual MLP ``M(x) = x + W2 σ(W1 x)``
    (eq. 89; ``dim → dim``) starting each sequence from learned parameters. At
    the end of each chunk every projection memory ``□`` is written with its own
    objective ``ℓ(M_□; k̄_t, v̂_□,t)`` (default L2, key ``k̄_t = k_t/‖k_t‖``, the
    target a constant for the inner step) and the update rule (default ``dgd``,
    eqs. 88/93), with the chunk's gradients at the chunk-start params::

        M_□ ← rule(Σ_t w_t ∇ℓ(M_□; k_t, v̂_□,t), M_□) − (1 − Π_t ᾱ_t) M_□

    where ``w_t = proj_lr · mean_h η_t`` weights each token (``dgd`` also gets the
    layers' inputs, so the step is ``M(αI − Σ w_t x_t x_tᵀ) − Σ w_t ∇ℓ_t``) and
    the retention ``ᾱ_t = mean_h α_t`` decays the chunk-start params — a loop
    over chunks, every read and gradient of a chunk batched.

    The main memory (per head, default ``residual-mlp`` on ``head_dim``) is a
    scan level (DESIGN.md §2, ``chunk_size`` tokens per chunk, read after write)
    written from ``k̂_t = norm(k_t)``, ``v̂_mem,t = M_mem,cC(v_t)`` (its own
    values generated at its chunk-start params) with ``θ_t = lr_max·η_t``,
    decay ``1 − α_t`` and optional momentum; ``y_t = W_o M_mem,t(norm(q_t))``.
    Deviation: the main memory uses the scan's momentum rule (fast chunked
    backend) rather than ``dgd``; the projection memories follow the configured
    ``rule``. Every memory's initial state is a learned (outer-level) parameter.

    State: ``{"proj": BoundaryState (B, P, …), "memory": MemoryState,
    "conv": Tensor | None, "step": int}``.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        heads: int = attrs.field(default=4, validator=positive_int)
        head_dim: int | None = attrs.field(default=None, validator=attrs.validators.optional(positive_int))
        memory: MemoryRef = attrs.field(factory=lambda: MemoryRef("residual-mlp"))
        """Main memory per head (head_dim → head_dim)."""
        proj_memory: MemoryRef = attrs.field(factory=lambda: MemoryRef("residual-mlp"))
        """Projection memories M_k, M_v, M_η, M_α (, M_q): dim → dim."""
        objective: ObjectiveRef = attrs.field(factory=lambda: ObjectiveRef("l2"))
        """Inner objective of every memory."""
        rule: OptimizerRef = attrs.field(factory=lambda: OptimizerRef("dgd", {"lr": 1.0}))
        """Update rule of the projection memories (η_t already weights the gradients)."""
        chunk_size: int = attrs.field(default=16, validator=positive_int)
        """Chunk of the main memory."""
        proj_chunk_size: int = attrs.field(default=16, validator=positive_int)
        """Chunk of the projection memories."""
        lr_max: float = attrs.field(default=0.1, validator=in_range(0.0, 100.0, lo_open=True))
        """Main memory θ_t = lr_max · η_t. The in-chunk steps add up (Σ_{i≤j} θ_i g_i
        at the chunk start), so keep ``lr_max · chunk_size`` of order 1."""
        proj_lr: float = attrs.field(default=0.05, validator=in_range(0.0, 100.0))
        """Projection memories' token weight w_t = proj_lr · η_t."""
        lr_init: float = attrs.field(default=0.1, validator=in_range(0.0, 1.0, lo_open=True, hi_open=True))
        retention_init: float = attrs.field(default=0.999, validator=in_range(0.0, 1.0, lo_open=True,
                                                                              hi_open=True))
        momentum: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0))
        """Main memory surprise momentum η (Titans eq. 10); 0: none."""
        self_values: bool = True
        """v̂_□ = M_□(v) (eq. 87); false: every memory regresses v itself."""
        adaptive_q: bool = False
        conv_size: int = attrs.field(default=4, validator=attrs.validators.ge(0))
        backend: str = attrs.field(default="auto", validator=plugin_name("backend", extra=("auto",)))

        def check(self, dim: int) -> None:
            if self.head_dim is None and dim % self.heads:
                raise ValueError(f"heads: {self.heads} heads do not divide dim {dim}; "
                                 "change heads or set head_dim")
            if self.conv_size == 1:
                raise ValueError("conv_size: a convolution needs width >= 2 (0 turns it off)")
            head_dim = self.head_dim or dim // self.heads
            if head_dim * self.heads != dim:
                raise ValueError(f"head_dim: heads × head_dim must equal dim ({dim}) because k, v "
                                 f"come from dim → dim memories; got {self.heads} × {head_dim}")
            for field, d in (("memory", head_dim), ("proj_memory", dim)):
                try:
                    getattr(self, field).build(d, d)
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"{field}: {exc}") from None
            if not getattr(self.rule.cls, "batched", False):
                raise ValueError(f"rule: {self.rule.type!r} does not declare batched functional use")

    def __init__(self, config: Config, dim: int) -> None:
        super().__init__()
        config.check(dim)
        self.config, self.dim = config, dim
        self.heads = config.heads
        self.head_dim = dim // config.heads
        self.names = ["k", "v", "eta", "alpha"] + (["q"] if config.adaptive_q else [])
        self.conv = ShortConv(dim, config.conv_size) if config.conv_size else None
        self.q = None if config.adaptive_q else nn.Linear(dim, dim, bias=False)
        self.eta = nn.Linear(dim, self.heads)  # η_t = σ(⟨u_η, e_t⟩ + b_η)
        self.alpha = nn.Linear(dim, self.heads)  # α_t = σ(⟨u_α, a_t⟩ + b_α)
        for lin, init in ((self.eta, config.lr_init), (self.alpha, config.retention_init)):
            nn.init.normal_(lin.weight, std=0.02 / dim ** 0.5)
            nn.init.constant_(lin.bias, float(torch.logit(torch.tensor(init))))
        self.proj_memory = config.proj_memory.build(dim, dim)
        self.proj_init = learned_init(self.proj_memory, len(self.names))  # M_□,0: (P, *shape)
        self.proj = BoundaryLevel(self.proj_memory, config.objective.build(), config.rule.build(),
                                  config.proj_chunk_size)
        self.memory = config.memory.build(self.head_dim, self.head_dim)
        self.memory_init = learned_init(self.memory, self.heads)  # M_mem,0: (H, *shape)
        self.objective = config.objective.build()
        self.out_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.out = nn.Linear(dim, dim, bias=False)
        self._last: dict[str, Any] | None = None

    def _fresh(self, batch: int) -> dict:
        proj = {n: p.expand(batch, *p.shape) for n, p in self.proj_init.items()}  # (B, P, …)
        mem = initial_state(self.memory, make_rule("momentum"), batch=batch, heads=self.heads,
                            params=dict(self.memory_init), chunk_size=self.config.chunk_size)
        return {"proj": self.proj.init_state(proj), "memory": mem, "conv": None, "step": 0}

    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:  # type: ignore[override]
        check_input("self-mod-titans", x, self.dim)
        cfg, B, P, H = self.config, x.shape[0], len(self.names), self.heads
        state = dict(state) if state is not None else self._fresh(B)
        conv = state["conv"]
        if self.conv is not None:
            x, conv = self.conv(x, conv)
        proj, mem, step, T = state["proj"], state["memory"], state["step"], x.shape[1]
        # 1) projection memories, chunk by chunk (eq. 90): read at the chunk start, then write
        outs, s_proj = [], []
        xs = l2norm(x)[:, None]  # (B, 1, T, dim) unit-norm inputs: DGD's closed form assumes
        cuts = segments(step, T, (cfg.proj_chunk_size,))  # ‖x_t‖ constant (NL eq. 57)
        for (lo, hi), xc in zip(cuts, split_at(xs, cuts)):
            proj, s = self.proj.settle(proj)  # M_□ ← rule(…) at the boundary (eq. 88)
            if s is not None:
                s_proj.append(s.mean(-1))
            out = self.proj.read(proj, xc)  # every M_□ at its chunk start (B, P, n, dim)
            k, v, eta, alpha = self._gates(out)
            n = hi - lo
            w = (cfg.proj_lr * eta.mean(1))[:, None].expand(B, P, n)  # w_t (B, P, n)
            r = alpha.mean(1)[:, None].expand(B, P, n)  # retention (B, P, n)
            kp = l2norm(k)[:, None]  # (B, 1, n, dim): the key of every M_□
            if cfg.self_values:  # v̂_□ = M_□(v_t) (eq. 87)
                proj = self.proj.append(proj, kp, self_target=v[:, None], weight=w, retention=r)
            else:
                proj = self.proj.append(proj, kp, v[:, None], weight=w, retention=r)
            outs.append(out)
        out = torch.cat(outs, 2) if outs else xs.new_zeros(B, P, 0, self.dim)
        k, v, eta, alpha = self._gates(out)
        q = out.unbind(1)[4] if cfg.adaptive_q else self.q(x)  # (B, T, dim)
        # 2) main memory, chunk by chunk: values generated at its chunk start, then the scan
        qh, kh, vh = l2norm(split_heads(q, H)), l2norm(split_heads(k, H)), split_heads(v, H)
        ys, s_mem, cuts = [], [], segments(step, T, (cfg.chunk_size,))
        lr, decay = cfg.lr_max * eta, 1.0 - alpha  # θ_t, 1 − α_t   (B, H, T)
        for qc, kc, vc, lc, dc in zip(*(split_at(t, cuts) for t in (qh, kh, vh, lr, decay))):
            point = mem.chunk_params if mem.position else mem.params
            vhat = self.memory.read(point, vc) if cfg.self_values else vc
            s_mem.append((tree_map(Tensor.detach, point), kc.detach(), vhat.detach()))  # for surprise()
            y, mem = memory_scan(qc, kc, vhat, memory=cfg.memory.type,
                                 objective=cfg.objective.type, optimizer="momentum",
                                 lr=lc, decay=dc, momentum=cfg.momentum,
                                 chunk_size=cfg.chunk_size, backend=cfg.backend, state=mem,
                                 memory_kwargs=cfg.memory.options,
                                 objective_kwargs=cfg.objective.options)
            ys.append(y)
        y = torch.cat(ys, 2) if ys else x.new_zeros(B, H, 0, self.head_dim)
        self._last = {"proj": proj, "tail": min(proj.position, T), "s_proj": s_proj,
                      "s_mem": s_mem}
        y = self.out(merge_heads(self.out_norm(y)))
        return y, {"proj": proj, "memory": mem, "conv": conv, "step": step + T}

    def _gates(self, out: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``k, v (B, n, dim)`` and per-head ``η_t``, ``α_t (B, H, n)`` from the reads of
        ``M_k, M_v, M_η, M_α`` (eq. 86)."""
        k, v, e, a = out.unbind(1)[:4]  # one unbind: its backward is one stack
        eta = torch.sigmoid(self.eta(e)).transpose(1, 2)  # η_t = σ(⟨u_η, e_t⟩ + b_η)
        alpha = torch.sigmoid(self.alpha(a)).transpose(1, 2)  # retention α_t
        return k, v, eta, alpha

    def fast_params(self, state: dict) -> dict[str, Tensor]:
        """The projection memories' parameters in effect for the next read,
        name → ``(B, P, *shape)`` in the order of ``self.names``."""
        return self.proj.settle(state["proj"])[0].params

    def surprise(self) -> dict[str, Tensor]:
        """Last forward's mean write-time ``‖∂ℓ/∂pred‖`` of the main memory and of every
        projection memory (its completed chunks and its still-pending tokens)."""
        last = self._last
        if last is None or not last["s_mem"]:
            return {}
        s_proj = list(last["s_proj"])  # (B, P) means per chunk
        if last["tail"]:
            delta = self.proj.chunk_delta(last["proj"])  # (B, P, m, dim)
            s_proj.append(delta.norm(dim=-1)[:, :, -last["tail"]:].mean(-1))
        sp = torch.stack(s_proj).mean((0, 1))  # (P,)
        out = {f"proj_{n}": sp[i] for i, n in enumerate(self.names)}
        with torch.no_grad():  # ‖∂ℓ/∂pred‖ at each chunk's start params, computed on request
            s_mem = [self.objective.grad(self.memory.read(point, k), vhat).norm(dim=-1).flatten(1)
                     for point, k, vhat in last["s_mem"]]
        out["memory"] = torch.cat(s_mem, 1).mean()
        return out
