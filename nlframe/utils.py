"""Small tensor helpers shared by plugins (no algorithms)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

__all__ = ["bcast"]


def bcast(h: Any, like: Tensor) -> Any:
    """Broadcast a hyperparameter against a parameter with leading dims.

    ``h`` is a number (returned as is) or a tensor whose shape is a prefix of
    ``like``'s leading dims (e.g. ``(B, H)`` against ``(B, H, Dv, Dk)``);
    trailing singleton dims are appended so it multiplies per element.
    """
    if not isinstance(h, Tensor) or h.dim() == 0:
        return h
    if h.dim() > like.dim() or tuple(like.shape[: h.dim()]) != tuple(h.shape):
        raise ValueError(f"hyperparameter of shape {tuple(h.shape)} does not match the leading "
                         f"dims of a parameter of shape {tuple(like.shape)}")
    return h.reshape(*h.shape, *([1] * (like.dim() - h.dim())))
