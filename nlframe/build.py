"""Build modules from validated specs: ``build(spec) -> nn.Module``."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from .spec import BlockSpec, Spec, load_spec

__all__ = ["build", "build_block", "build_blocks", "count_parameters"]


def build_block(block: BlockSpec, dim: int) -> nn.Module:
    """One module ``cls(config, dim)`` of the registered block ``block.type``."""
    return block.cls(block.config, dim)


def build_blocks(blocks: Any, dim: int) -> list[tuple[str, nn.Module]]:
    """``(type, module)`` for every block of a stack, ``repeat`` expanded into
    independent copies (each with its own parameters)."""
    return [(b.type, build_block(b, dim)) for b in blocks for _ in range(b.repeat)]


def build(spec: Any, *, seed: int | None = None, device: Any = None,
          dtype: torch.dtype | None = None) -> nn.Module:
    """The model of ``spec`` (a :class:`Spec`, a path, TOML text or a dict).

    ``seed`` makes the initial parameters reproducible without touching the
    global RNG; ``device``/``dtype`` move the built model.
    """
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with rng:
        if seed is not None:
            torch.manual_seed(seed)
        model = build_block(spec.model, spec.model.config.dim)
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model


def count_parameters(spec: Any) -> int:
    """Number of distinct parameters of the model of ``spec`` (tied weights once).

    Builds the model on the CPU (cheaper than the ``meta`` device's one-time
    start-up for the model sizes specs describe) and drops it.
    """
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    return sum(p.numel() for p in build(spec).parameters())
