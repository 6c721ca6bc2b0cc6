"""Reload a model saved with ``model.save_pretrained(dir)`` after :func:`add_memory` /
:func:`stack_levels`.

Nothing extra is needed to save: HF's own ``save_pretrained`` writes the memory
weights with the base ones (safetensors) and ``config.json`` carries
``nlframe_hf``, the list of operations applied. :func:`from_pretrained` loads the
base model with HF's ``AutoModelForCausalLM.from_pretrained``, replays the
operations, then loads the weights they own from the same files.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator

from torch import nn

__all__ = ["from_pretrained", "apply_ops", "owned_prefixes"]


def apply_ops(model: nn.Module, ops: list[dict[str, Any]]) -> nn.Module:
    """Replay recorded ``add_memory`` / ``stack_levels`` operations on ``model``."""
    from .memory import add_memory

    model.config.nlframe_hf = []
    for op in ops:
        op = dict(op)
        kind, options = op.pop("op", None), dict(op.pop("options", {}))
        if kind == "add_memory":
            add_memory(model, op["block"], op["layers"], gate_init=op["gate_init"], **options)
        elif kind == "stack_levels":
            from .stack import stack_levels

            stack_levels(model, **options)
        else:
            raise ValueError(f"nlframe_hf: unknown operation {kind!r} in the model's config")
    return model


def owned_prefixes(model: nn.Module) -> list[str]:
    """State-dict key prefixes of the modules the operations added or replaced."""
    from .memory import ATTR
    from .models import decoder_layers

    path, mods = decoder_layers(model)
    out = []
    for i, layer in enumerate(mods):
        if hasattr(layer, ATTR):
            out.append(f"{path}.{i}.{ATTR}.")
        if getattr(getattr(layer, "mlp", None), "nl_stateful", False):
            out.append(f"{path}.{i}.mlp.")
    return out


def _weight_files(path: str) -> list[str]:
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(path, n) for n in names]
    single = os.path.join(path, "model.safetensors")
    if not os.path.exists(single):
        raise FileNotFoundError(f"{path}: no model.safetensors(.index.json); save the model with "
                                "model.save_pretrained(dir) (safetensors)")
    return [single]


@contextmanager
def _quiet_load_report() -> Iterator[None]:
    """HF reports the keys of the memory layers as unexpected: silence that report
    (the keys are checked here instead)."""
    logger = logging.getLogger("transformers.modeling_utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def from_pretrained(path: str, **kwargs: Any) -> nn.Module:
    """A causal LM with its nlframe memory layers from a local directory written by
    ``model.save_pretrained(path)``; ``kwargs`` go to HF's ``from_pretrained``
    (``torch_dtype``, ``device_map``, …). Identical logits to the saved model."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    ops = getattr(AutoConfig.from_pretrained(path), "nlframe_hf", None)
    if not ops:
        raise ValueError(f"{path}: config.json has no nlframe_hf entry (no memory was added); "
                         "load it with transformers' AutoModelForCausalLM.from_pretrained")
    with _quiet_load_report():
        model, info = AutoModelForCausalLM.from_pretrained(path, output_loading_info=True, **kwargs)
    apply_ops(model, ops)
    prefixes = tuple(owned_prefixes(model))
    other = {k: sorted(x for x in info.get(k, ()) if not x.startswith(prefixes))
             for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(other.values()):
        logging.getLogger(__name__).warning("%s: base weights not loaded as saved: %s", path,
                                            {k: v for k, v in other.items() if v})
    params = dict(model.state_dict())
    loaded: dict[str, Any] = {}
    for file in _weight_files(path):
        with safe_open(file, framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                if key.startswith(prefixes):
                    loaded[key] = f.get_tensor(key)
    wanted = {k for k in params if k.startswith(prefixes)}
    if set(loaded) != wanted:
        missing, extra = sorted(wanted - set(loaded)), sorted(set(loaded) - wanted)
        raise ValueError(f"{path}: the memory weights do not match the recorded operations "
                         f"(missing {missing[:5]}, unexpected {extra[:5]})")
    model.load_state_dict(loaded, strict=False)
    return model
