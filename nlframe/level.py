"""Levels and their carried fast state.

A *level* is (memory, objective, update rule, frequency): it writes its memory
every ``chunk_size`` tokens from the gradients of its objective over the chunk
(docs/concepts.md) and is read after every write. :class:`MemoryState` is what a
level carries between calls, so a scan of ``[x1; x2]`` equals a scan of ``x1``
followed by a scan of ``x2`` for any split point.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import attrs
import torch
from torch import Tensor

from .interfaces import OptState, Params


__all__ = ["MemoryState", "ContextFlow", "Level", "tree_map", "autocast_on", "autocast_off",
           "upcast", "full_precision", "compilable", "segments", "split_at"]


def compilable(cls: type) -> type:
    """Class decorator for attrs classes built inside a compiled forward pass.

    ``torch.compile`` inlines an attrs-generated ``__init__`` but looks the helper
    names it uses (``NOTHING``, ``__attr_factory_<field>``) up as globals of the
    module the class is defined in, where attrs never put them; this puts them
    there (refusing a clash of two different helpers under one name).
    """
    import sys

    module = sys.modules[cls.__module__]
    for name, value in cls.__init__.__globals__.items():
        if name == "NOTHING" or name.startswith("__attr_"):
            if getattr(module, name, value) is not value:
                raise TypeError(f"{cls.__qualname__}: attrs helper {name!r} clashes with another "
                                f"class of {cls.__module__}")
            setattr(module, name, value)
    return cls


def tree_map(fn: Callable[[Tensor], Any], tree: Any,
             leaf: Callable[[Any], Any] | None = None) -> Any:
    """Apply ``fn`` to every tensor of a nested dict/list/tuple; other leaves pass through,
    or through ``leaf`` when given (e.g. to map inside state objects)."""
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: tree_map(fn, v, leaf) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(tree_map(fn, v, leaf) for v in tree)
    return tree if leaf is None else leaf(tree)


def segments(position: int, length: int, chunk_sizes: tuple[int, ...]) -> list[tuple[int, int]]:
    """Split ``length`` tokens, starting ``position`` tokens into the stream, at every
    multiple of every size in ``chunk_sizes`` → ``[(lo, hi), ...]`` (a loop over
    chunks: ``≈ length / min(chunk_sizes)`` pieces)."""
    cuts = {0, length}
    for c in chunk_sizes:
        first = (-position) % c
        cuts.update(range(first, length, c))
    edges = sorted(x for x in cuts if 0 <= x <= length)
    return [(lo, hi) for lo, hi in zip(edges, edges[1:]) if hi > lo]


def split_at(x: Tensor, bounds: list[tuple[int, int]], dim: int = 2) -> tuple[Tensor, ...]:
    """``x`` cut along ``dim`` into the contiguous pieces ``[(lo, hi), ...]`` of
    :func:`segments` (one ``torch.split``: its backward is one concatenation, where
    slicing piece by piece zero-fills a full-size gradient per piece)."""
    return torch.split(x, [hi - lo for lo, hi in bounds], dim)


# -- mixed precision ------------------------------------------------------------
def autocast_on(x: Tensor) -> bool:
    """Whether ``torch.autocast`` is enabled for the device type of ``x``."""
    return torch.is_autocast_enabled(x.device.type)


def autocast_off(x: Tensor) -> contextlib.AbstractContextManager:
    """A context with autocast disabled for the device type of ``x`` if it is enabled
    there (a no-op context otherwise)."""
    if autocast_on(x):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def upcast(tree: Any, dtype: torch.dtype = torch.float32) -> Any:
    """``tree`` (tensors, dicts, lists, tuples, :class:`MemoryState`) with every floating
    tensor narrower than ``dtype`` cast to ``dtype``; other leaves unchanged."""
    def cast(t: Tensor) -> Tensor:
        if t.is_floating_point() and t.dtype != dtype and torch.promote_types(t.dtype, dtype) == dtype:
            return t.to(dtype)
        return t

    if isinstance(tree, MemoryState):
        return attrs.evolve(tree.map(cast), surprise=tree.surprise)
    if isinstance(tree, dict):
        return {k: upcast(v, dtype) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(upcast(v, dtype) for v in tree)
    return tree_map(cast, tree)


def full_precision(fn: Callable[..., Any], *args: Any, dtype: torch.dtype = torch.float32,
                   device_type: str | None = None, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in the fast state's precision (docs/concepts.md, Mixed precision).

    When autocast is enabled for ``device_type`` (default: that of the first tensor
    argument), ``fn`` runs with autocast disabled there and every floating tensor of
    ``args`` / ``kwargs`` narrower than ``dtype`` upcast to it; otherwise ``fn`` is called
    unchanged (the fp32 / fp64 path is untouched)."""
    if device_type is None:
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None)
        device_type = first.device.type if first is not None else "cpu"
    if not torch.is_autocast_enabled(device_type):
        return fn(*args, **kwargs)  # fp32 / fp64 path: nothing is cast
    with torch.autocast(device_type, enabled=False):
        return fn(*upcast(args, dtype), **upcast(kwargs, dtype))


@compilable
@attrs.define(eq=False)
class MemoryState:
    """Fast state of one level, per (batch element, head).

    * ``params``: ``W_t`` after the last token, name → ``(B, H, *shape)``;
    * ``opt_state``: the update rule's state (for ``momentum``:
      ``{"momentum": {name: S_t}}``);
    * ``chunk_params``: ``W_{cC}``, the parameters at the start of the current
      chunk, where every gradient of the chunk is taken;
    * ``position``: tokens already consumed in the current chunk
      (``0 ≤ position < chunk_size``; 0 means the next token opens a chunk);
    * ``chunk_size``: the frequency this state was written with;
    * ``step``: total tokens written so far;
    * ``pending``: ``write="chunk"`` only — the open chunk's accumulated step so far,
      name → ``(B, H, *shape)`` (``Σ_t θ_t g_t``, plus ``Σ_t θ_t (W_c x_t) x_tᵀ`` for
      ``dgd``), applied at the chunk's last token;
    * ``surprise``: not carried state but the last call's diagnostic — the mean
      write-time ``‖∂ℓ/∂pred_t‖`` per ``(B, H)`` over its tokens, computed by the scan
      from the errors it already has (``None`` for an empty call);
    * ``read_after``: not carried state either — the read a :meth:`Level.write_only`
      call was asked for, at this state's read point (``None`` otherwise).
    """

    params: Params
    opt_state: OptState
    chunk_params: Params
    position: int = 0
    chunk_size: int | None = None
    step: int = 0
    pending: Params = attrs.field(factory=dict)
    surprise: Tensor | None = None
    read_after: Tensor | None = None

    @classmethod
    def create(cls, params: Params, rule: Any, *, chunk_size: int | None = None) -> "MemoryState":
        """Fresh state at ``params`` with the rule's initial state (zero momentum)."""
        return cls(params=dict(params), opt_state=rule.init(params), chunk_params=dict(params),
                   position=0, chunk_size=chunk_size, step=0)

    @property
    def momentum(self) -> Params | None:
        """``S_t`` of the momentum rule (name → tensor), or ``None`` for rules without it."""
        m = self.opt_state.get("momentum") if isinstance(self.opt_state, dict) else None
        return m

    @property
    def batch_shape(self) -> torch.Size:
        p = next(iter(self.params.values()))
        return p.shape[:2]

    # -- tensor plumbing -------------------------------------------------------
    def map(self, fn: Callable[[Tensor], Tensor]) -> "MemoryState":
        """A new state with ``fn`` applied to every tensor."""
        return attrs.evolve(self, params=tree_map(fn, self.params),
                            opt_state=tree_map(fn, self.opt_state),
                            chunk_params=tree_map(fn, self.chunk_params),
                            pending=tree_map(fn, self.pending), surprise=None, read_after=None)

    def detach(self) -> "MemoryState":
        """Cut the autograd history (truncated backprop through time)."""
        return self.map(lambda t: t.detach())

    def to(self, *args: Any, **kwargs: Any) -> "MemoryState":
        """Move/cast every tensor, like ``Tensor.to``."""
        return self.map(lambda t: t.to(*args, **kwargs))

    def select(self, index: Any) -> "MemoryState":
        """The state of some batch elements: ``index`` indexes the leading ``B`` dim."""
        return self.map(lambda t: t[index] if t.dim() >= 2 else t)

    def state_dict(self) -> dict[str, Any]:
        """A plain dict (tensors, ints) suitable for ``torch.save``."""
        return {"params": dict(self.params), "opt_state": self.opt_state,
                "chunk_params": dict(self.chunk_params), "position": self.position,
                "chunk_size": self.chunk_size, "step": self.step, "pending": dict(self.pending)}

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> "MemoryState":
        return cls(params=dict(d["params"]), opt_state=d["opt_state"],
                   chunk_params=dict(d["chunk_params"]), position=int(d["position"]),
                   chunk_size=d.get("chunk_size"), step=int(d.get("step", 0)),
                   pending=dict(d.get("pending", {})))


@compilable
@attrs.define(eq=False)
class ContextFlow:
    """The stream one level learns from in one call: queries, keys, values and gates.

    ``q, k: (B, H, T, Dk)``, ``v: (B, H, T, Dv)``; ``lr`` (θ), ``decay`` (α),
    ``momentum`` (η): floats or ``(B, H, T)`` tensors. A block routes its input
    into one flow per level (projections, gates, norms); the level does the math.
    """

    q: Tensor
    k: Tensor
    v: Tensor
    lr: Any = 0.1
    decay: Any = 0.0
    momentum: Any = 0.0


class Level:
    """A level: memory + objective + update rule + frequency + read/write modes, with
    its plugins resolved once, at construction (docs/concepts.md)::

        level = Level.build("mlp", "l2", "dgd", dim_k=32, dim_v=32, chunk_size=8,
                            read="chunk_start", self_target=True)
        y, state = level.scan(ContextFlow(q, k, v, lr=θ, decay=α), state)

    ``scan`` runs the scan contract with this level's instances; ``write_only`` is the
    same step without the reads; ``scan_routed`` is the level op for levels whose
    chunk flows come from their own chunk-start reads (the projection memories of
    self-modifying Titans); ``init_state`` gives the fresh
    per-sequence state from (learned) initial parameters. ``name`` labels errors
    (``"blocks[2].titans.memory"``); blocks set it when they know their place.
    """

    def __init__(self, memory: Any, objective: Any, rule: Any, *, chunk_size: int = 1,
                 read: str = "after_write", write: str = "token", self_target: bool = False,
                 grad_clip: float | None = None, backend: str = "auto", name: str | None = None,
                 names: dict[str, str] | None = None, optimizer_kwargs: dict | None = None,
                 truncate: bool = False) -> None:
        from .scan import check_modes

        check_modes(read, write, self_target, grad_clip)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        self.memory, self.objective, self.rule = memory, objective, rule
        self.chunk_size, self.read, self.write = chunk_size, read, write
        self.self_target, self.grad_clip, self.backend = self_target, grad_clip, backend
        self.name = name
        self.names = dict(names or {"memory": type(memory).__name__,
                                    "objective": type(objective).__name__,
                                    "optimizer": type(rule).__name__})
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self.truncate = truncate

    @classmethod
    def build(cls, memory: str = "linear", objective: str = "l2", optimizer: str = "momentum", *,
              dim_k: int, dim_v: int, memory_kwargs: dict | None = None,
              objective_kwargs: dict | None = None, **options: Any) -> "Level":
        """A level from registered plugin names (looked up once, here)."""
        from .scan import make_memory, make_objective, make_rule

        return cls(make_memory(memory, dim_k, dim_v, **dict(memory_kwargs or {})),
                   make_objective(objective, **dict(objective_kwargs or {})), make_rule(optimizer),
                   names={"memory": memory, "objective": objective, "optimizer": optimizer},
                   **options)

    def __repr__(self) -> str:
        return (f"Level({self.names['memory']}, {self.names['objective']}, "
                f"{self.names['optimizer']}, chunk_size={self.chunk_size}, read={self.read!r}, "
                f"write={self.write!r}, self_target={self.self_target})")

    def init_state(self, *, batch: int, heads: int, params: Params | None = None,
                   dtype: torch.dtype = torch.float32, device: Any = None) -> MemoryState:
        """Fresh state at ``params`` (``(H, *shape)`` or ``(B, H, *shape)``; ``None``: the
        memory's own initialisation)."""
        from .scan import initial_state

        return initial_state(self.memory, self.rule, batch=batch, heads=heads, params=params,
                             chunk_size=self.chunk_size, dtype=dtype, device=device)

    @torch.compiler.disable
    def scan(self, flow: ContextFlow, state: MemoryState | None = None, *,
             outputs: bool = True, read_after: Tensor | None = None) -> tuple[Tensor, MemoryState]:
        """``y, state`` of the scan contract over ``flow`` from ``state``.

        An outer ``torch.compile`` (``[train] compile = true``) compiles the code
        around the scan and runs the scan itself eagerly, through its backend."""
        from .scan import run_scan

        return run_scan(flow.q, flow.k, flow.v, memory=self.memory, objective=self.objective,
                        rule=self.rule, names=self.names, lr=flow.lr, decay=flow.decay,
                        momentum=flow.momentum, chunk_size=self.chunk_size, backend=self.backend,
                        state=state, read=self.read, write=self.write,
                        self_target=self.self_target, optimizer_kwargs=self.optimizer_kwargs,
                        grad_clip=self.grad_clip, name=self.name, outputs=outputs,
                        truncate=self.truncate, read_after=read_after)

    def write_only(self, flow: ContextFlow, state: MemoryState | None = None, *,
                   read_after: Tensor | None = None) -> MemoryState:
        """Only the writes of :meth:`scan` (no reads of ``flow.q``). With ``read_after``
        ``(B, H, n, Dk)``, the new state's ``read_after`` is ``M_{W'}(read_after)`` at its
        read point ``W'`` (:meth:`read_point`): the backend's, where it computes the read
        with its last writes (the chunked backend's fused DGD tiles), else read here."""
        if state is not None and state.read_after is not None:  # a read asked for earlier
            state = attrs.evolve(state, read_after=None)
        state = self.scan(flow, state, outputs=False, read_after=read_after)[1]
        if read_after is not None and state.read_after is None:
            state.read_after = self.memory.read(self.read_point(state), read_after)
        return state

    def scan_routed(self, x: Tensor, state: MemoryState,
                    route: Callable[[Tensor], tuple[ContextFlow, Any]]
                    ) -> tuple[list[Tensor], list[Any], MemoryState]:
        """The coupled level op beside the scan contract: a level whose keys, values and
        gates of a chunk come from its own read of that chunk at the chunk start (the
        projection memories of self-modifying Titans, NL eqs. 86, 90–91)::

            for every chunk c of x:   r_c = M_{W_c}(x_c)          (one read per chunk)
                                      flow_c, out_c = route(r_c)
                                      W ← writes of flow_c        (this level's rule, modes)

        ``x: (B, H, T, Dk)``; ``state`` from :meth:`init_state` or a previous call (a call
        may start or end inside a chunk: its pieces are cut at the chunk boundaries of
        the stream). ``route`` maps a read ``(B, H, n, Dv)`` to the chunk's
        :class:`ContextFlow` (its ``q`` is not read) and whatever the caller keeps
        (projections, gates). Returns the reads and the kept values per piece, and the
        new state, whose ``surprise`` is the token-weighted mean over the call. An empty
        call routes one empty read (so the caller gets its shapes) and writes nothing.
        Every write is one :meth:`write_only`, so every backend, check and error of the
        contract applies; a non-finite read raises ``FloatingPointError`` naming its token
        and stream position. The outer gradient flows through reads, routes and writes."""
        from .scan import check_reads

        if self.read != "chunk_start":
            raise ValueError(f"scan_routed: a level routed from its own reads must read at the "
                             f"chunk start, got read={self.read!r}")
        T = x.shape[2]
        if T == 0:
            read = self.memory.read(self.read_point(state), x)
            return [read], [route(read)[1]], state
        reads, kept, surprise = [], [], 0.0
        pieces = split_at(x, segments(state.position, T, (self.chunk_size,)))
        read = self.memory.read(self.read_point(state), pieces[0])
        for i, xc in enumerate(pieces):
            if not bool(torch.isfinite(read.detach().sum())):  # one reduction when finite
                check_reads(read, state.step, f"level {self.name or 'scan_routed'!r}",
                            f"memory={self.names.get('memory')!r}, a routed read")
            flow, out = route(read)
            reads.append(read)
            kept.append(out)
            # the next piece's read comes with this piece's writes (one fused call where
            # the backend can)
            nxt = pieces[i + 1] if i + 1 < len(pieces) else None
            state = self.write_only(flow, state, read_after=nxt)
            surprise = surprise + state.surprise * (xc.shape[2] / T)
            read = state.read_after
        return reads, kept, attrs.evolve(state, surprise=surprise, read_after=None)

    def read_point(self, state: MemoryState) -> Params:
        """The parameters every read and gradient of the current chunk uses: ``W_c``."""
        return state.chunk_params if state.position else state.params
