"""Where a Hugging Face causal LM keeps its decoder layers, and building nlframe blocks."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["LAYOUTS", "decoder_layers", "make_block"]

LAYOUTS = {"transformer.h": "GPT-2 style (GPT2LMHeadModel: model.transformer.h)",
           "model.layers": "Llama style (LlamaForCausalLM and kin: model.model.layers)"}
"""Attribute path of the decoder-layer list → the families that use it."""


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """``(path, layers)``: the decoder-layer list of a GPT-2 or Llama style causal LM.

    Raises ``ValueError`` naming the supported layouts for any other model."""
    for path in LAYOUTS:
        obj: Any = model
        for name in path.split("."):
            obj = getattr(obj, name, None)
        if isinstance(obj, nn.ModuleList) and len(obj):
            return path, obj
    raise ValueError(f"{type(model).__name__} is not a supported causal LM: nlframe.hf supports "
                     f"{' and '.join(LAYOUTS.values())}")


def make_block(name: str, dim: int, options: dict[str, Any]) -> nn.Module:
    """The registered block ``name`` of width ``dim`` from keyword ``options``, validated
    like a spec table (:func:`nlframe.layer`)."""
    from ..layers import layer

    return layer(name, dim, **options)
