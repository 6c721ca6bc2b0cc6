"""``self-mod-titans``: the self-modifying (self-referential) Titans of Nested
Learning — keys, values, learning rates and decays produced by memories that are
themselves written in context (NL arXiv 2512.24695 §8.1–8.2)."""

from __future__ import annotations


import attrs
import torch
from torch import Tensor, nn

from nlframe.interfaces import Block
from nlframe.level import ContextFlow, MemoryState, full_precision
from nlframe.spec import (MemoryRef, ObjectiveRef, OptimizerRef, in_range, one_of, plugin_name,
                          positive_int)

from .common import (ShortConv, check_input, check_rule_options, l2norm, learned_init, make_level,
                     merge_heads, spec_field, split_heads)


class SelfModTitans(Block):
    """Self-modifying Titans (NL arXiv 2512.24695 eqs. 86–93): every projection is a memory.

    For input ``x_t`` (after a short causal convolution, then L2-normalised: DGD's
    closed form assumes ``‖x_t‖`` constant, NL eq. 57), with ``c`` the chunk of ``t``
    (``proj_chunk_size`` tokens for the projection memories, ``chunk_size`` for the
    main memory) and every memory read at the parameters of its chunk start (eq. 90)::

        k_t = M_k,c(x_t),  v_t = M_v,c(x_t),  e_t = M_η,c(x_t),  a_t = M_α,c(x_t)   (q_t = W_q x_t,
                                                                  or M_q,c(x_t) with adaptive_q)
        η_t = σ(⟨u_η, e_t⟩ + b_η),  α_t = σ(⟨u_α, a_t⟩ + b_α)           (one per head)
        v̂_□,t = M_□,c(v_t)                                                (self-generated values, eq. 87/91)
        M_□ ← M_□((1 − ᾱ_t)I − θ_t x x ᵀ) − θ_t ∇ℓ(M_□,c; k̄_t, v̂_□,t)   per token (DGD, eqs. 88, 91, 93)
        y_t = W_o · M_mem,c(q̂_t)                                            (eq. 90)

    Every memory ``□`` is a residual MLP ``x + W2 σ(W1 x)`` (eq. 89) starting each
    sequence from learned parameters. The projection memories (dim → dim) use the
    key ``k̄_t = k_t/‖k_t‖``, weight ``θ_t = proj_lr · rule.lr · mean_h η_t`` and
    retention ``ᾱ_t = mean_h α_t``; the main memory (per head on ``head_dim``) uses
    ``k̂ = norm(k)``, ``q̂ = norm(q)``, ``θ_t = lr_max · η_t`` and retention ``α_t``.
    In the scan contract's words (docs/concepts.md) every memory is a level with
    ``read="chunk_start", write="token", optimizer="dgd", self_target=True``; the
    projection memories' level steps chunk by chunk (their keys come from their
    own chunk-start reads: one routed call, :meth:`~nlframe.level.Level.scan_routed`),
    the main memory is one scan.

    Variants, each a spec option: ``memory_rule = "momentum"`` (main memory written
    with ``S = η S − θ g``, ``W = (1 − α) W + S`` instead of DGD, ``momentum`` = η),
    ``memory_read = "after_write"`` (Titans' ``y_t = M_mem,t(q̂_t)``), ``rule`` of the
    projection memories (any batched rule; one without a ``decay`` hyperparameter
    gets no retention), ``self_values = false`` (targets ``v_t``).
    Stability (docs/concepts.md): ``grad_clip`` clips every memory's ``∂ℓ/∂pred_t`` per token;
    θ is bounded by ``lr_max`` and ``proj_lr``; retentions lie in (0, 1).

    State: ``{"proj": MemoryState (B, P, …), "memory": MemoryState, "conv": Tensor | None}``.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        heads: int = attrs.field(default=4, validator=positive_int)
        head_dim: int | None = attrs.field(default=None, validator=attrs.validators.optional(positive_int))
        memory: MemoryRef = attrs.field(
            factory=lambda: MemoryRef("residual-mlp"), converter=spec_field(MemoryRef))
        """Main memory per head (head_dim → head_dim)."""
        proj_memory: MemoryRef = attrs.field(
            factory=lambda: MemoryRef("residual-mlp"), converter=spec_field(MemoryRef))
        """Projection memories M_k, M_v, M_η, M_α (, M_q): dim → dim."""
        objective: ObjectiveRef = attrs.field(
            factory=lambda: ObjectiveRef("l2"), converter=spec_field(ObjectiveRef))
        """Inner objective of every memory."""
        rule: OptimizerRef = attrs.field(
            factory=lambda: OptimizerRef("dgd", {"lr": 1.0}), converter=spec_field(OptimizerRef))
        """Update rule of the projection memories (``lr`` multiplies their θ_t)."""
        memory_rule: str = attrs.field(default="dgd", validator=one_of("dgd", "momentum"))
        """Main memory rule: ``dgd`` (NL eq. 88) or ``momentum`` (Titans eqs. 10, 13)."""
        memory_read: str = attrs.field(default="chunk_start",
                                       validator=one_of("chunk_start", "after_write"))
        """Main memory read: at the chunk start (NL eq. 90) or after each write (Titans)."""
        chunk_size: int = attrs.field(default=16, validator=positive_int)
        """Chunk of the main memory."""
        proj_chunk_size: int = attrs.field(default=16, validator=positive_int)
        """Chunk of the projection memories."""
        lr_max: float = attrs.field(default=0.1, validator=in_range(0.0, 100.0, lo_open=True))
        """Main memory θ_t = lr_max · η_t (DGD with unit keys contracts for θ < 1)."""
        proj_lr: float = attrs.field(default=0.05, validator=in_range(0.0, 100.0))
        """Projection memories' θ_t = proj_lr · rule.lr · mean_h η_t."""
        lr_init: float = attrs.field(default=0.1, validator=in_range(0.0, 1.0, lo_open=True, hi_open=True))
        retention_init: float = attrs.field(default=0.999, validator=in_range(0.0, 1.0, lo_open=True,
                                                                              hi_open=True))
        momentum: float = attrs.field(default=0.0, validator=in_range(0.0, 1.0))
        """Main memory surprise momentum η (``memory_rule = "momentum"`` only)."""
        self_values: bool = True
        """v̂_□ = M_□(v) (eq. 87); false: every memory regresses v itself."""
        adaptive_q: bool = False
        grad_clip: float = attrs.field(default=2.0, validator=in_range(0.0, 1e6))
        """Per-token clip of every memory's ``‖∂ℓ/∂pred_t‖`` (0: off)."""
        conv_size: int = attrs.field(default=4, validator=attrs.validators.ge(0))
        inner_grad: str = attrs.field(default="full", validator=one_of("full", "truncated"))
        """``full``: the outer gradient flows through every write (initial states,
        projections and gates learn through the whole stream); ``truncated``: it stops at
        each chunk's write — a chunk's keys, values and gates learn only through the
        next chunk's reads, and ``W_0`` only through the first chunk (cheaper backward)."""
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
            check_rule_options("rule", self.rule)
            if self.inner_grad == "truncated" and self.memory_read != "chunk_start":
                raise ValueError("inner_grad: truncated needs memory_read = \"chunk_start\"")
            if self.memory_rule == "dgd" and self.momentum:
                raise ValueError("momentum: DGD has no momentum; set memory_rule = \"momentum\" "
                                 "or momentum = 0")

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
        modes = {"grad_clip": config.grad_clip or None, "backend": config.backend,
                 "truncate": config.inner_grad == "truncated"}
        self.proj, self.proj_scale = make_level(
            config.proj_memory, config.objective, config.rule, dim, dim,
            chunk_size=config.proj_chunk_size, read="chunk_start", write="token",
            self_target=config.self_values, name="self-mod-titans.proj", **modes)
        self.proj_memory = self.proj.memory
        # the retention ᾱ_t reaches the projection memories through the rule's decay α
        # (dgd, momentum); a rule without one keeps no retention
        self.proj_retains = (getattr(config.rule.cls, "structure", None) in ("dgd", "momentum")
                             or "decay" in config.rule.cls.hyperparams)
        self.proj_init = learned_init(self.proj_memory, len(self.names))  # M_□,0: (P, *shape)
        self.level, _ = make_level(
            config.memory, config.objective, OptimizerRef(config.memory_rule), self.head_dim,
            self.head_dim, chunk_size=config.chunk_size, read=config.memory_read, write="token",
            self_target=config.self_values, name="self-mod-titans.memory", **modes)
        self.memory = self.level.memory
        self.memory_init = learned_init(self.memory, self.heads)  # M_mem,0: (H, *shape)
        self.out_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.out = nn.Linear(dim, dim, bias=False)
        self._surprise: dict[str, Tensor] = {}

    def _fresh(self, x: Tensor) -> dict:
        B = x.shape[0]
        return {"proj": self.proj.init_state(batch=B, heads=len(self.names),
                                             params=dict(self.proj_init)),
                "memory": self.level.init_state(batch=B, heads=self.heads,
                                                params=dict(self.memory_init)),
                "conv": None}

    def forward(self, x: Tensor, state: dict | None = None) -> tuple[Tensor, dict]:  # type: ignore[override]
        check_input("self-mod-titans", x, self.dim)
        cfg, H = self.config, self.heads
        state = dict(state) if state is not None else self._fresh(x)
        conv = state["conv"]
        if self.conv is not None:
            x, conv = self.conv(x, conv)
        proj, mem, T = state["proj"], state["memory"], x.shape[1]
        # 1) projection memories (under autocast in float32: a fast-weight inner loop)
        dtype = torch.promote_types(next(iter(proj.params.values())).dtype, torch.float32)
        outs, (k, v, eta, alpha), proj = full_precision(self._project, x, proj, dtype=dtype)
        q = torch.cat(outs, 2).unbind(1)[4] if cfg.adaptive_q else self.q(x)  # (B, T, dim)
        # 2) main memory: one scan with keys, values and gates known for the whole sequence
        qh, kh, vh = l2norm(split_heads(q, H)), l2norm(split_heads(k, H)), split_heads(v, H)
        flow = ContextFlow(qh, kh, vh, lr=cfg.lr_max * eta, decay=1.0 - alpha,
                           momentum=cfg.momentum)
        y, mem = self.level.scan(flow, mem)
        self._surprise = {}
        if T:
            sp = proj.surprise.mean(0)  # (P,): the routed scan's token-weighted mean
            self._surprise = {f"proj_{nm}": sp[i] for i, nm in enumerate(self.names)}
            self._surprise["memory"] = mem.surprise.mean()
        y = self.out(merge_heads(self.out_norm(y)))
        return y, {"proj": proj, "memory": mem, "conv": conv}

    def _project(self, x: Tensor, proj: MemoryState) -> tuple[list, tuple, MemoryState]:
        """The projection memories over ``x (B, T, dim)``: one routed level call
        (:meth:`~nlframe.level.Level.scan_routed`) reads every M_□ at its chunk start
        (eq. 90) and writes the chunk token by token (DGD, eq. 91) with the keys, values
        and gates this block routes from that read. Returns the reads (per piece,
        ``(B, P, n, dim)``), ``k, v (B, T, dim)``, ``η, α (B, H, T)`` and the new state."""
        cfg, B, P = self.config, x.shape[0], len(self.names)
        xs = l2norm(x)[:, None].expand(B, P, x.shape[1], self.dim)  # unit-norm inputs (eq. 57)

        def route(out: Tensor) -> tuple[ContextFlow, tuple]:
            k, v, eta, alpha = gates = self._gates(out)  # (B, n, dim), (B, H, n)
            n = out.shape[2]
            theta = (self.proj_scale * cfg.proj_lr * eta.mean(1))[:, None].expand(B, P, n)
            decay = (1.0 - alpha.mean(1))[:, None].expand(B, P, n) if self.proj_retains else 0.0
            kp = l2norm(k)[:, None].expand(B, P, n, self.dim)  # the key of every M_□
            return ContextFlow(kp, kp, v[:, None].expand(B, P, n, self.dim), lr=theta,
                               decay=decay), gates

        outs, gates, proj = self.proj.scan_routed(xs, proj, route)
        # k, v (B, T, dim); η, α (B, H, T), as computed per piece above
        kv_gates = tuple(torch.cat(g, d) for g, d in zip(zip(*gates), (1, 1, 2, 2)))
        return outs, kv_gates, proj

    def _gates(self, out: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``k, v (B, n, dim)`` and per-head ``η_t``, ``α_t (B, H, n)`` from the reads of
        ``M_k, M_v, M_η, M_α`` (eq. 86)."""
        k, v, e, a = out.unbind(1)[:4]  # one unbind: its backward is one stack
        eta = torch.sigmoid(self.eta(e)).transpose(1, 2)  # η_t = σ(⟨u_η, e_t⟩ + b_η)
        alpha = torch.sigmoid(self.alpha(a)).transpose(1, 2)  # retention α_t
        return k, v, eta, alpha

    def fast_params(self, state: dict) -> dict[str, Tensor]:
        """The projection memories' parameters the next read uses (its chunk start),
        name → ``(B, P, *shape)`` in the order of ``self.names``."""
        return self.proj.read_point(state["proj"])

    def surprise(self) -> dict[str, Tensor]:
        """Last forward's mean write-time ``‖∂ℓ/∂pred‖`` of the main memory and of every
        projection memory, as computed by their scans."""
        return dict(self._surprise)
