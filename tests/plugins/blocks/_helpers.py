"""Shared helpers of the block tests."""

from __future__ import annotations

from typing import Any, Sequence

import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error ``‖a − b‖ / ‖b‖`` (detached)."""
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def feed_in_pieces(module: Any, x: torch.Tensor, cuts: Sequence[int]) -> tuple[torch.Tensor, Any]:
    """Feed ``x`` split at the sorted positions ``cuts`` (dim 1), carrying the state;
    returns the concatenated outputs and the last state."""
    state, outs = None, []
    for lo, hi in zip([0, *cuts], [*cuts, x.shape[1]]):
        y, state = module(x[:, lo:hi], state)
        outs.append(y)
    return torch.cat(outs, 1), state
