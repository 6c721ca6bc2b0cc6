"""``add_memory``: nlframe memory blocks as gated residual layers of a Hugging Face LM."""

from __future__ import annotations

import json
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .cache import install
from .models import decoder_layers, make_block

__all__ = ["MemoryLayer", "add_memory", "memory_parameters", "record_op", "pick_layers"]

ATTR = "nl_memory"
"""Name of the memory submodule on a decoder layer (its weights: ``….<i>.nl_memory.…``)."""


class MemoryLayer(nn.Module):
    """``h ← h + g ⊙ block(norm(h))`` after a decoder layer (``g`` a per-channel gate).

    A block with ``handles_residual`` (it adds its own residual) gives
    ``h ← h + g ⊙ (block(h) − h)``. With ``g = 0`` (the default ``gate_init``) the
    layer is the identity, so the model computes exactly what it did before.
    """

    nl_stateful = True  # its fast state rides in the cache (nlframe.hf.cache)
    nl_state_in = nl_state_out = None

    def __init__(self, block: nn.Module, dim: int, gate_init: float = 0.0) -> None:
        super().__init__()
        self.block = block
        self.residual = bool(getattr(block, "handles_residual", False))
        self.norm = None if self.residual else nn.RMSNorm(dim, eps=1e-6)
        self.gate = nn.Parameter(torch.full((dim,), float(gate_init)))

    def forward(self, h: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        if self.residual:
            y, state = self.block(h, state)
            delta = y - h
        else:
            delta, state = self.block(self.norm(h), state)
        return h + self.gate.to(h.dtype) * delta.to(h.dtype), state


def attach(layer: nn.Module, index: int, memory: MemoryLayer) -> None:
    """Put ``memory`` on decoder layer ``index`` (submodule :data:`ATTR`, run after the
    layer by the hooks of :func:`~nlframe.hf.cache.install`)."""
    if hasattr(layer, ATTR):
        raise ValueError(f"decoder layer {index} already has a memory")
    layer.add_module(ATTR, memory)
    install(layer, index)


def pick_layers(model: nn.Module, layers: Sequence[int] | None) -> list[int]:
    """Indices of the chosen decoder layers (``None``: all; negative indices count from the end)."""
    _, mods = decoder_layers(model)
    n = len(mods)
    if layers is None:
        return list(range(n))
    if isinstance(layers, int) or not all(isinstance(i, int) and not isinstance(i, bool)
                                          for i in layers):
        raise ValueError(f"layers must be None or a list of ints, got {layers!r}")
    out = []
    for i in layers:
        if not -n <= i < n:
            raise ValueError(f"layers: index {i} out of range for {n} decoder layers")
        out.append(i % n)
    if len(set(out)) != len(out):
        raise ValueError(f"layers: repeated index in {list(layers)}")
    return sorted(out)


def record_op(model: nn.Module, op: dict[str, Any]) -> None:
    """Append ``op`` to ``model.config.nlframe_hf`` (saved in config.json, replayed by
    :func:`~nlframe.hf.from_pretrained`); it must be JSON."""
    try:
        json.dumps(op)
    except TypeError as exc:
        raise ValueError(f"options must be JSON values (to be saved with the model): {exc}") from None
    model.config.nlframe_hf = [*(getattr(model.config, "nlframe_hf", None) or []), op]


def add_memory(model: nn.Module, block: str = "titans", layers: Sequence[int] | None = None, *,
               freeze_base: bool = False, gate_init: float = 0.0, **options: Any) -> nn.Module:
    """Insert a memory block after each chosen decoder layer of ``model``; returns ``model``.

    ``block`` is a registered nlframe block (``titans``, ``cms``, ``hope``, …), built
    at the model's hidden size from ``options`` validated like a spec table; each
    layer's output ``h (B, T, D)`` becomes ``h + g ⊙ block(norm(h))`` with a
    per-channel gate ``g`` starting at ``gate_init`` (0: the model is unchanged).
    ``freeze_base`` sets ``requires_grad = False`` on every weight already in the
    model. The memory's fast state rides in the generation cache (see
    :mod:`nlframe.hf.cache`). GPT-2 and Llama style models; others raise ``ValueError``.
    """
    _, mods = decoder_layers(model)
    chosen = pick_layers(model, layers)
    dim = int(model.config.hidden_size)
    built = [make_block(block, dim, dict(options)) for _ in chosen]  # validate before changing anything
    for i in chosen:
        if hasattr(mods[i], ATTR):
            raise ValueError(f"decoder layer {i} already has a memory")
    record_op(model, {"op": "add_memory", "block": block, "layers": chosen,
                      "gate_init": float(gate_init), "options": options})
    if freeze_base:
        model.requires_grad_(False)
    ref = next(model.parameters())
    for i, b in zip(chosen, built):
        attach(mods[i], i, MemoryLayer(b, dim, gate_init).to(device=ref.device, dtype=ref.dtype))
    return model


def memory_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the memory layers inserted by :func:`add_memory`."""
    _, mods = decoder_layers(model)
    return [p for layer in mods if hasattr(layer, ATTR) for p in getattr(layer, ATTR).parameters()]
