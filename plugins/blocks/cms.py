"""``cms``: the Continuum Memory System — a chain of MLP levels, level ℓ updated
every C(ℓ) tokens (NL arXiv 2512.24695 §7.1)."""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import Tensor, nn

from nlframe.interfaces import Block
from nlframe.level import ContextFlow, MemoryState, autocast_off
from nlframe.spec import MemoryRef, ObjectiveRef, OptimizerRef, in_range, one_of, plugin_name

from .common import BoundaryLevel, BoundaryState, check_input, make_level, spec_field


def _chunk_sizes(_inst: Any, _attr: Any, value: Any) -> None:
    if not value:
        raise ValueError("expected at least one level (a non-empty array of chunk sizes)")
    for i, c in enumerate(value):
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ValueError(f"[{i}]: expected a positive int, got {c!r}")


def _train_every(_inst: Any, _attr: Any, value: Any) -> None:
    if value is None:
        return
    for i, c in enumerate(value):
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ValueError(f"[{i}]: expected a positive int, got {c!r}")


class CMS(Block):
    """Continuum Memory System: MLP levels ``MLP^{(f_1)} … MLP^{(f_k)}``, level ℓ with
    chunk size ``C(ℓ)`` (NL arXiv 2512.24695 §7.1, eqs. 70–74).

    Each level reads ``h + M_θℓ(norm_ℓ(h))`` with a memory plugin (default the
    2-layer MLP ``W2 σ(W1 ·)``, dim → dim). Its parameters ``θ_ℓ`` learn in two
    regimes, each switchable:

    * **(b) in context** (``in_context``): per sequence, ``θ_ℓ`` starts from its
      slow (learned) value, every read uses ``θ_ℓ`` as of the level's last
      boundary, and at every multiple of ``C(ℓ)`` tokens the level applies its
      rule to the chunk's mean gradient of a local surprise objective over keys
      and values projected from its input (``k = W_k u``, ``v = W_v u``,
      ``u = norm_ℓ(h)``, as in Titans) — eq. 71::

          θ_{i+1} = rule(θ_i, (1/C) Σ_{t=i−C+1}^{i} ∇ℓ(M_θ_i(k_t), v_t))   if i ≡ 0 (mod C(ℓ)), else θ_i

      so ``θ_ℓ`` changes exactly at multiples of ``C(ℓ)`` and nowhere else.
    * **(a) training frequency** (``train_every``): every slow parameter of level ℓ
      is listed by :meth:`update_every` with ``C_train(ℓ)``; the outer optimizer
      steps it only every that many steps, from the gradients summed since.

    Variants (how levels connect, §7.1):

    * ``sequential`` (eqs. 70, 73): ``h ← h + MLP_ℓ(norm_ℓ(h))`` for ℓ = 1..k in
      order; every level's initial state is a slow parameter trained by
      backpropagation at the lowest frequency (the outer loop).
    * ``nested`` (eqs. 70, 72): the same chain, but the initial state of level
      ``s+1`` is *meta-learned in level s*: it is a fast parameter ``Φ_{s+1}`` of
      level ``s`` (starting each sequence from the slow value), and at every
      boundary of level ``s`` (every ``C(s)`` tokens, which must be a multiple of
      ``C(s+1)``) ``Φ_{s+1}`` takes one step of the rule on the first-order
      meta-gradient — the sum of level ``s+1``'s chunk gradients over that
      ``C(s)``-token context — and level ``s+1`` is re-initialised to it.
    * ``independent`` (eq. 74, head-wise): every level reads the same input and
      ``y = x + Σ_ℓ w_ℓ MLP_ℓ(norm_ℓ(x))`` (Agg = a learnable weighted sum, ``w_ℓ``
      starting at ``1/k``); knowledge transfer as in ``sequential``.

    The block does its own norms and residuals (``handles_residual``).
    In the scan contract's words (docs/concepts.md) an in-context level of the
    ``sequential`` / ``independent`` variants is a level with ``read="chunk_start",
    write="chunk"``, its rule any plugin, ``θ_t = rule.lr / C(ℓ)`` (so ``G_c`` is
    ``rule.lr`` times the chunk's mean gradient, applied with ``lr = 1``). A ``nested``
    level is a :class:`~.common.BoundaryLevel` scan (the level op beside the contract
    that hands each chunk's gradient to its caller); the block adds only the meta step.

    State: per level a :class:`~nlframe.level.MemoryState` (``nested``: a
    :class:`~.common.BoundaryState`); ``None`` entries without the in-context regime.
    """

    @attrs.frozen(kw_only=True)
    class Config:
        chunk_sizes: tuple[int, ...] = attrs.field(default=(16, 64), validator=_chunk_sizes)
        """C(ℓ) per level, in the order the input flows through them."""
        variant: str = attrs.field(default="sequential",
                                   validator=one_of("sequential", "nested", "independent"))
        memory: MemoryRef = attrs.field(
            factory=lambda: MemoryRef("mlp"), converter=spec_field(MemoryRef))
        """The level MLP: a memory plugin mapping dim → dim (``{type = "mlp", hidden = 256}``)."""
        objective: ObjectiveRef = attrs.field(
            factory=lambda: ObjectiveRef("l2"), converter=spec_field(ObjectiveRef))
        """Local surprise objective of the in-context regime."""
        rule: OptimizerRef = attrs.field(
            factory=lambda: OptimizerRef("momentum", {"lr": 0.01}),
            converter=spec_field(OptimizerRef))
        """Update rule applied at each level's boundaries (default: plain GD, the momentum rule with
        η = α = 0; its ``lr`` scales θ_t = lr / C(ℓ)). Any batched rule works."""
        in_context: bool = True
        """Regime (b): per-sequence fast weights written every C(ℓ) tokens."""
        train_every: tuple[int, ...] | None = attrs.field(default=None, validator=_train_every)
        """Regime (a): C_train(ℓ) per level (default: every optimizer step)."""
        grad_clip: float = attrs.field(default=0.0, validator=in_range(0.0, 1e6))
        """Per-token clip of each level's ``‖∂ℓ/∂pred_t‖`` (sequential / independent; 0: off)."""
        backend: str = attrs.field(default="auto", validator=plugin_name("backend", extra=("auto",)))
        inner_grad: str = attrs.field(default="full", validator=one_of("full", "truncated"))
        """``full``: the outer gradient flows through every in-context write (θ_ℓ,0, the key
        and value projections and the norms learn through the whole sequence);
        ``truncated``: it stops at each chunk's write — a chunk's keys and values learn
        only through the next chunk's reads, and θ_ℓ,0 only through the first chunk
        (sequential / independent). The chunked backend runs both in its multi-chunk
        tiles (levels with ``2 C ≤ 32``); truncated has the shorter backward pass."""

        def check(self, dim: int) -> None:
            try:
                self.memory.build(dim, dim)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"memory: {exc}") from None
            if not getattr(self.rule.cls, "batched", False):
                raise ValueError(f"rule: {self.rule.type!r} does not declare batched functional "
                                 "use, so it cannot write per-sequence fast weights")
            lr = self.rule.options.get("lr", 1.0)
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 <= lr < float("inf"):
                raise ValueError(f"rule: lr must be a finite number >= 0, got {lr!r}")
            if self.train_every is not None and len(self.train_every) != len(self.chunk_sizes):
                raise ValueError(f"train_every: expected one entry per level "
                                 f"({len(self.chunk_sizes)}), got {len(self.train_every)}")
            if self.variant == "nested" and (self.grad_clip or self.backend != "auto"
                                             or self.inner_grad != "full"):
                field = ("grad_clip" if self.grad_clip else
                         "backend" if self.backend != "auto" else "inner_grad")
                raise ValueError(f"{field}: the nested variant writes its levels at chunk "
                                 "boundaries itself (its meta step needs each chunk's gradient); "
                                 "grad_clip, backend and inner_grad apply to sequential / "
                                 "independent")
            if self.variant == "nested":
                for s, (outer, inner) in enumerate(zip(self.chunk_sizes, self.chunk_sizes[1:])):
                    if outer % inner:
                        raise ValueError(f"chunk_sizes[{s + 1}]: a nested level's chunk size must "
                                         f"divide its parent's ({outer}), got {inner}")

    handles_residual = True

    def __init__(self, config: Config, dim: int) -> None:
        super().__init__()
        config.check(dim)
        self.config, self.dim = config, dim
        n = len(config.chunk_sizes)
        self.memories = [config.memory.build(dim, dim) for _ in range(n)]
        objective, rule = config.objective.build(), config.rule.build()
        # nested: the meta step of eq. 72 needs each chunk's gradient (BoundaryLevel);
        # sequential / independent: one scan level per CMS level (eq. 71)
        self.levels = [BoundaryLevel(m, objective, rule, c, reduce="mean")
                       for m, c in zip(self.memories, config.chunk_sizes)] \
            if config.variant == "nested" else []
        self.scan_levels, self.lr = [], 1.0
        if config.variant != "nested":
            for i, c in enumerate(config.chunk_sizes):
                level, self.lr = make_level(config.memory, config.objective, config.rule, dim, dim,
                                            chunk_size=c, read="chunk_start", write="chunk",
                                            grad_clip=config.grad_clip or None, backend=config.backend,
                                            truncate=config.inner_grad == "truncated",
                                            name=f"cms.level{i}")
                level.memory = self.memories[i]
                self.scan_levels.append(level)
        self.norms = nn.ModuleList(nn.RMSNorm(dim, eps=1e-6) for _ in range(n))
        self.init = nn.ModuleList()  # θ_ℓ,0 (slow): name → (1, *shape)
        for m in self.memories:
            self.init.append(nn.ParameterDict({name: nn.Parameter(p[None]) for name, p in
                                               m.init_params(generator=_generator()).items()}))
        self.keys = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(n)) \
            if config.in_context else None
        self.values = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(n)) \
            if config.in_context else None
        self.agg = nn.Parameter(torch.full((n,), 1.0 / n)) if config.variant == "independent" else None
        self._train_every: dict[str, int] = {}  # regime (a): parameter name → C_train(ℓ)
        for i, every in enumerate(config.train_every or (1,) * n):
            for part in ("init", "norms", *(("keys", "values") if config.in_context else ())):
                for name, _ in getattr(self, part)[i].named_parameters(prefix=f"{part}.{i}"):
                    self._train_every[name] = every
        self._last: list = [None] * n

    def update_every(self) -> dict[str, int]:
        """``train_every`` per slow parameter (CMS regime (a))."""
        return {k: c for k, c in self._train_every.items() if c != 1}

    # ------------------------------------------------------------------ levels
    def _fresh(self, i: int, batch: int) -> BoundaryState:
        params = {n: p.expand(batch, *p.shape) for n, p in self.init[i].items()}  # (B, 1, …)
        state = self.levels[i].init_state(params)
        if self._parent(i):  # Φ_i: level i−1's fast copy of θ_i,0 (nested)
            state.extra = {"meta": self.levels[i].init_state(params), "meta_grad": {},
                           "meta_position": 0}
        return state

    def _parent(self, i: int) -> int | None:
        """``C(i−1)`` for a nested level (its context length), else ``None``."""
        return self.config.chunk_sizes[i - 1] if self.config.variant == "nested" and i else None

    def _settle(self, i: int, state: BoundaryState) -> tuple[BoundaryState, Tensor | None]:
        """Apply level i's completed chunk (eq. 71) and, for a nested level at its
        parent's boundary, the meta step of ``Φ_i`` and the re-initialisation (eq. 72)."""
        level, parent = self.levels[i], self._parent(i)
        collect: dict | None = {} if parent else None
        state, surprise = level.settle(state, collect=collect)
        if not parent or surprise is None:
            return state, surprise
        extra = dict(state.extra)
        extra["meta_grad"] = {m: extra["meta_grad"][m] + g if m in extra["meta_grad"] else g
                              for m, g in collect["grads"].items()}  # first-order meta-gradient
        if extra["meta_position"] < parent:
            return attrs.evolve(state, extra=extra), surprise
        meta, scale = extra["meta"], level.chunk_size / parent  # mean over the C(parent) context
        grads = {m: g * scale for m, g in extra["meta_grad"].items()}
        with autocast_off(next(iter(meta.params.values()))):  # the meta step in fp32
            params, opt_state = level.rule.update(grads, meta.opt_state, meta.params,
                                                  **level.hyper)
        meta = attrs.evolve(meta, params=params, opt_state=opt_state)
        fresh = level.init_state(params)  # θ_i ← Φ_i, with a fresh rule state
        fresh.step, fresh.extra = state.step, {"meta": meta, "meta_grad": {}, "meta_position": 0}
        return fresh, surprise

    def _level(self, i: int, h: Tensor, state: Any) -> tuple[Tensor, Any]:
        """``M_θℓ(norm_ℓ(h))`` for ``h (B, T, dim)`` and the level's new state."""
        u = self.norms[i](h)[:, None]  # (B, 1, T, dim)
        memory = self.memories[i]
        if not self.config.in_context:
            return memory.read(dict(self.init[i]), u)[:, 0], None  # θ_ℓ,0 for every sequence
        if self.scan_levels:  # eq. 71: read at the chunk start, one step per chunk on Σ θ_t g_t
            lvl = self.scan_levels[i]
            if state is None:
                state = lvl.init_state(batch=h.shape[0], heads=1, params=dict(self.init[i]))
            flow = ContextFlow(u, self.keys[i](u), self.values[i](u),
                               lr=self.lr / lvl.chunk_size)  # θ_t = lr/C: the chunk's mean gradient
            y, state = lvl.scan(flow, state)
            self._last[i] = state.surprise
            return y[:, 0], state
        level = self.levels[i]
        if state is None:
            state = self._fresh(i, h.shape[0])
        k, v = self.keys[i](u), self.values[i](u)  # (B, 1, T, dim)

        def count(state: BoundaryState, n: int) -> BoundaryState:  # tokens of Φ_i's context
            return attrs.evolve(state, extra={**state.extra,
                                              "meta_position": state.extra["meta_position"] + n})

        y, state, norms = level.scan(u, k, v, state, settle=lambda s: self._settle(i, s),
                                     appended=count if self._parent(i) else None)
        self._last[i] = (state, min(state.position, h.shape[1]), norms)
        return y[:, 0], state

    def fast_params(self, state: list) -> list[dict[str, Tensor] | None]:
        """θ_ℓ in effect for the next read of each level, ``(B, 1, *shape)`` (pending
        completed chunks applied), from a state returned by :meth:`forward`."""
        out = []
        for i, s in enumerate(state):
            if s is None:
                out.append(None)
            elif isinstance(s, MemoryState):
                out.append(self.scan_levels[i].read_point(s))
            else:
                out.append(self._settle(i, s)[0].params)
        return out

    # ------------------------------------------------------------------ block
    def forward(self, x: Tensor, state: list | None = None) -> tuple[Tensor, list]:  # type: ignore[override]
        check_input("cms", x, self.dim)
        n = len(self.memories)
        if state is None:
            state = [None] * n
        elif not isinstance(state, (list, tuple)) or len(state) != n:
            raise ValueError(f"cms: state must be the list of {n} level states returned by a "
                             "previous call")
        self._last = [None] * n
        new_state = []
        if self.config.variant == "independent":  # eq. 74: y = x + Σ w_ℓ MLP_ℓ(x)
            y = x
            for i in range(n):
                out, s = self._level(i, x, state[i])
                y = y + self.agg[i] * out
                new_state.append(s)
            return y, new_state
        h = x  # eq. 70: y = MLP^(f_k)(… MLP^(f_1)(x)), each level residual
        for i in range(n):
            out, s = self._level(i, h, state[i])
            h = h + out
            new_state.append(s)
        return h, new_state

    def surprise(self) -> dict[str, Tensor]:
        """Mean ``‖∂ℓ/∂pred_t‖`` per level over the last forward's writes: the chunks
        it completed and the tokens still pending at its end (in-context regime)."""
        out = {}
        for i, last in enumerate(self._last):
            if last is None:
                continue
            if isinstance(last, Tensor):  # a scan level's own surprise (B, 1)
                out[f"level{i}"] = last.mean()
                continue
            state, tail, norms = last
            delta = self.levels[i].chunk_delta(state) if tail else None
            if delta is not None:
                norms = [*norms, delta.norm(dim=-1)[:, :, -tail:].flatten(1)]
            if norms:
                out[f"level{i}"] = torch.cat(norms, 1).mean()
        return out


def _generator() -> torch.Generator:
    """A CPU generator seeded from the global RNG (so ``build(seed=…)`` decides θ_0)."""
    return torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (), device="cpu")))
