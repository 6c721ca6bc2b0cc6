"""Resolve data names (``stdlib``, ``mqar``, ``text:PATH``) to data plugins."""

from __future__ import annotations

from typing import Any

from .interfaces import DataSource
from .registry import get_registry

__all__ = ["open_data"]


def open_data(name: str, **options: Any) -> DataSource:
    """The :class:`DataSource` for ``name``; ``"plugin:arg"`` passes ``arg`` (e.g. a path)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"data name must be a non-empty string, got {name!r}")
    plugin, _, arg = name.partition(":")
    factory = get_registry().get("data", plugin)
    return factory(arg or None, **options)
