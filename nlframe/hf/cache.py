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
from torch import Tensor, nn

from ..layers import map_state

__all__ = ["FastStates", "fast_states", "install"]


class FastStates:
    """Per ``(decoder layer, part)``: the part's state after ``seen`` tokens of batch ``batch``."""

    def __init__(self) -> None:
        self.states: dict[Any, Any] = {}
        self.seen: dict[Any, int] = {}
        self.batch: dict[Any, int] = {}

    def put(self, key: Any, state: Any, seen: int, batch: int) -> None:
        self.states[key], self.seen[key], self.batch[key] = state, seen, batch

    def clear(self) -> None:
        self.states.clear(), self.seen.clear(), self.batch.clear()

    def _on_batch(self, fn: Callable[[Tensor], Tensor], new_batch: Callable[[int], int]) -> None:
        for i, state in self.states.items():
            b = self.batch[i]
            self.states[i] = map_state(lambda t, b=b: fn(t) if t.dim() and t.shape[0] == b else t,
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


# ------------------------------------------------------------------ decoder-layer hooks
def _parts(layer: nn.Module) -> list[tuple[str, nn.Module]]:
    """The stateful parts of a decoder layer: its memory (run after the layer) and a
    stacked MLP (run inside it); each reads ``nl_state_in`` and sets ``nl_state_out``."""
    return [(name, getattr(layer, name)) for name in ("nl_memory", "mlp")
            if getattr(getattr(layer, name, None), "nl_stateful", False)]


def _before(layer: nn.Module, args: tuple, kwargs: dict) -> None:
    """Hand each part the state it continues: the cache's, when the cache already holds
    tokens of this sequence; else ``None`` (a fresh sequence)."""
    from transformers.cache_utils import Cache

    index = layer.nl_index
    cache = next((a for a in (*args, *kwargs.values()) if isinstance(a, Cache)), None)
    past = cache.get_seq_length(index) if cache is not None else 0
    layer.nl_call = (cache, past)
    for name, part in _parts(layer):
        part.nl_state_in = None
        if past:
            states = fast_states(cache)
            if states.seen.get((index, name)) != past:
                raise RuntimeError(
                    f"nlframe.hf: decoder layer {index}: the cache holds {past} tokens but the "
                    f"fast state of its {name} has seen {states.seen.get((index, name), 0)}: a "
                    "memory cannot be rolled back, so a cache that was cropped, filled without "
                    "the memory or reused (assisted/speculative decoding, prefix caches) is not "
                    "supported")
            part.nl_state_in = states.states[(index, name)]


def _after(layer: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    """Run the memory on the layer's output; keep the parts' new states in the cache
    when the layer appended this call's tokens to it."""
    cache, past = layer.nl_call
    layer.nl_call = (None, 0)
    h = output[0] if isinstance(output, tuple) else output
    memory = getattr(layer, "nl_memory", None)
    if memory is not None:
        h, memory.nl_state_out = memory(h, memory.nl_state_in)
    t, index = h.shape[1], layer.nl_index
    if cache is not None and cache.get_seq_length(index) == past + t:
        states = fast_states(cache)
        for name, part in _parts(layer):
            states.put((index, name), part.nl_state_out, past + t, h.shape[0])
    for _, part in _parts(layer):
        part.nl_state_in = part.nl_state_out = None
    return (h, *output[1:]) if isinstance(output, tuple) else h


def install(layer: nn.Module, index: int) -> None:
    """Hook decoder layer ``index`` (once) so that its stateful parts carry their fast
    state in the cache the model passes to it."""
    if getattr(layer, "nl_index", None) is None:
        layer.nl_index = index
        layer.register_forward_pre_hook(_before, with_kwargs=True)
        layer.register_forward_hook(_after, with_kwargs=True)
