"""Fast state of the memory layers, carried inside a Hugging Face generation cache.

The first memory layer that sees a cache attaches a :class:`FastStates` to it
(``cache.nlframe_states``) and gives the cache a subclass of its own class whose
``reorder_cache`` / ``batch_select_indices`` / ``batch_repeat_interleave`` /
``reset`` also apply to the fast states (beam search reorders them with the
key/value tensors). ``isinstance(cache, DynamicCache)`` etc. still hold.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

__all__ = ["FastStates", "fast_states", "map_tree"]


def map_tree(fn: Callable[[Tensor], Tensor], tree: Any) -> Any:
    """``fn`` on every tensor of a block state (dicts, lists, tuples and objects with a
    ``map`` method such as :class:`~nlframe.level.MemoryState`)."""
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: map_tree(fn, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(map_tree(fn, v) for v in tree)
    if callable(getattr(tree, "map", None)):
        return tree.map(fn)
    return tree


class FastStates:
    """Per decoder layer: the memory's state after ``seen`` tokens of batch size ``batch``."""

    def __init__(self) -> None:
        self.states: dict[int, Any] = {}
        self.seen: dict[int, int] = {}
        self.batch: dict[int, int] = {}

    def put(self, index: int, state: Any, seen: int, batch: int) -> None:
        self.states[index], self.seen[index], self.batch[index] = state, seen, batch

    def clear(self) -> None:
        self.states.clear(), self.seen.clear(), self.batch.clear()

    def _on_batch(self, fn: Callable[[Tensor], Tensor], new_batch: Callable[[int], int]) -> None:
        for i, state in self.states.items():
            b = self.batch[i]
            self.states[i] = map_tree(lambda t, b=b: fn(t) if t.dim() and t.shape[0] == b else t,
                                      state)
            self.batch[i] = new_batch(b)

    def select(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (beam reordering, batch selection)."""
        self._on_batch(lambda t: t.index_select(0, index.to(t.device)), lambda _b: len(index))

    def repeat_interleave(self, repeats: int) -> None:
        self._on_batch(lambda t: t.repeat_interleave(repeats, dim=0), lambda b: b * repeats)


class _WithFastStates:
    """Mixed into a cache's class: batch operations also apply to its fast states."""

    nlframe_states: FastStates

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)  # type: ignore[misc]
        self.nlframe_states.select(beam_idx)

    def batch_select_indices(self, indices: Tensor) -> None:
        super().batch_select_indices(indices)  # type: ignore[misc]
        self.nlframe_states.select(torch.as_tensor(indices))

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)  # type: ignore[misc]
        self.nlframe_states.repeat_interleave(repeats)

    def reset(self) -> None:
        super().reset()  # type: ignore[misc]
        self.nlframe_states.clear()


_CLASSES: dict[type, type] = {}


def fast_states(cache: Any) -> FastStates:
    """The :class:`FastStates` carried by ``cache`` (attached on first use)."""
    if not isinstance(cache, _WithFastStates):
        base = type(cache)
        if base not in _CLASSES:
            _CLASSES[base] = type(f"{base.__name__}WithMemory", (_WithFastStates, base),
                                  {"__module__": base.__module__,
                                   "__doc__": f"{base.__name__} carrying nlframe fast states."})
        cache.__class__ = _CLASSES[base]
        cache.nlframe_states = FastStates()
    return cache.nlframe_states
