"""Helpers shared by the data plugins: seeded generators and argument checks."""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from nlframe.interfaces import Batch

__all__ = ["SPLITS", "generator", "stable_hash", "check_split", "check_int", "check_no_arg",
           "make_batch"]

SPLITS = ("train", "validation")


def stable_hash(*parts: Any) -> int:
    """A 63-bit integer from ``repr`` of ``parts`` (sha256): identical on every machine and run."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(*parts: Any) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``parts`` (e.g. task, seed, split, index).

    Batches are pure functions of these parts, so training resumes exactly
    from a saved index.
    """
    g = torch.Generator()
    g.manual_seed(stable_hash(*parts))
    return g


def check_split(plugin: str, split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"{plugin}: split must be one of {SPLITS}, got {split!r}")


def check_int(plugin: str, name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int ≥ ``minimum``, else a ``ValueError`` naming ``plugin.name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{plugin}: {name} must be an int >= {minimum}, got {value!r}")
    return value


def check_no_arg(plugin: str, arg: Any) -> None:
    """Tasks other than ``text:PATH`` take no ``:ARG`` in their name."""
    if arg not in (None, ""):
        raise ValueError(f"data plugin {plugin!r} takes no ':' argument, got {plugin}:{arg}")


def make_batch(tokens: torch.Tensor, targets: torch.Tensor,
               mask: torch.Tensor | None = None) -> Batch:
    """A :class:`Batch` with ``tokens``/``targets`` int64 ``(B, T)`` and an optional bool mask."""
    out = Batch(tokens=tokens.to(torch.int64), targets=targets.to(torch.int64))
    if mask is not None:
        out["mask"] = mask.to(torch.bool)
    return out
