"""Levels and their carried fast state.

A *level* is (memory, objective, update rule, frequency): it writes its memory
every ``chunk_size`` tokens from the gradients of its objective over the chunk
(DESIGN.md §2) and is read after every write. :class:`MemoryState` is what a
level carries between calls, so a scan of ``[x1; x2]`` equals a scan of ``x1``
followed by a scan of ``x2`` for any split point.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs
import torch
from torch import Tensor

from .interfaces import OptState, Params

__all__ = ["MemoryState", "ContextFlow", "Level", "tree_map"]


def tree_map(fn: Callable[[Tensor], Any], tree: Any) -> Any:
    """Apply ``fn`` to every tensor of a nested dict/list/tuple; other leaves pass through."""
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(tree_map(fn, v) for v in tree)
    return tree


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
    * ``step``: total tokens written so far.
    """

    params: Params
    opt_state: OptState
    chunk_params: Params
    position: int = 0
    chunk_size: int | None = None
    step: int = 0

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
                            chunk_params=tree_map(fn, self.chunk_params))

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
                "chunk_size": self.chunk_size, "step": self.step}

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> "MemoryState":
        return cls(params=dict(d["params"]), opt_state=d["opt_state"],
                   chunk_params=dict(d["chunk_params"]), position=int(d["position"]),
                   chunk_size=d.get("chunk_size"), step=int(d.get("step", 0)))


@attrs.frozen
class ContextFlow:
    """The stream a level learns from: queries, keys, values and per-token gates.

    ``q, k: (B, H, T, Dk)``, ``v: (B, H, T, Dv)``; ``lr`` (θ), ``decay`` (α),
    ``momentum`` (η): floats or ``(B, H, T)`` tensors.
    """

    q: Tensor
    k: Tensor
    v: Tensor
    lr: Any = 0.1
    decay: Any = 0.0
    momentum: Any = 0.0


@attrs.frozen
class Level:
    """A level: memory + objective + update rule + update frequency (``chunk_size``).

    ``Level(...).scan(flow, state)`` runs :func:`nlframe.memory_scan` with this
    level's plugins; names are registered plugin names.
    """

    memory: str = "linear"
    objective: str = "l2"
    optimizer: str = "momentum"
    chunk_size: int = 1
    backend: str = "auto"
    memory_kwargs: dict = attrs.field(factory=dict)
    objective_kwargs: dict = attrs.field(factory=dict)
    optimizer_kwargs: dict = attrs.field(factory=dict)

    def scan(self, flow: ContextFlow, state: MemoryState | None = None) -> tuple[Tensor, MemoryState]:
        from .scan import memory_scan

        return memory_scan(flow.q, flow.k, flow.v, memory=self.memory, objective=self.objective,
                           optimizer=self.optimizer, lr=flow.lr, decay=flow.decay,
                           momentum=flow.momentum, chunk_size=self.chunk_size,
                           backend=self.backend, state=state, memory_kwargs=self.memory_kwargs,
                           objective_kwargs=self.objective_kwargs,
                           optimizer_kwargs=self.optimizer_kwargs)
