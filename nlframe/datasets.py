"""Resolve data names (``stdlib``, ``mqar``, ``text:PATH``) to data plugins."""

from __future__ import annotations

import inspect
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
    accepted = _options_of(factory)
    unknown = sorted(set(options) - set(accepted)) if accepted is not None else []
    if unknown:
        listing = ", ".join(accepted) or "none"
        raise ValueError(f"data {plugin!r} has no option {unknown[0]!r} (its options: {listing})")
    return factory(arg or None, **options)


def _options_of(factory: Any) -> list[str] | None:
    """The keyword options a data plugin takes (``None``: it takes any)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind is p.KEYWORD_ONLY]
