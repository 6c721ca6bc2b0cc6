"""attrs validators for spec fields; each error reads ``expected ..., got ...``.

Shared by plugin ``Config`` classes and the ``[train]`` table; importing this
module pulls in only :mod:`nlframe.spec.refs` besides the registry.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any, Iterable

import attrs

from ..registry import UnknownPluginError, get_registry
from .errors import SpecError
from .refs import PluginRef

__all__ = ["positive_int", "non_negative", "in_range", "one_of", "plugin_name", "matches",
           "all_finite", "InRange", "OneOf", "PluginName", "Matches", "is_number"]


def is_number(value: Any) -> bool:
    """An int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@attrs.frozen
class _PositiveInt:
    """Validator: an int ≥ 1."""

    def __call__(self, _inst: Any, _attr: Any, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"expected a positive int, got {value!r}")


@attrs.frozen
class _NonNegative:
    """Validator: a finite number ≥ 0."""

    def __call__(self, _inst: Any, _attr: Any, value: Any) -> None:
        if not is_number(value) or not math.isfinite(value) or value < 0:
            raise ValueError(f"expected a number >= 0, got {value!r}")


@attrs.frozen
class InRange:
    """Validator: a number in ``[lo, hi]`` (an end is excluded when ``*_open``)."""

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False

    def __call__(self, _inst: Any, _attr: Any, value: Any) -> None:
        ok = is_number(value) and math.isfinite(value)
        if ok:
            ok = (value > self.lo if self.lo_open else value >= self.lo) and (
                value < self.hi if self.hi_open else value <= self.hi)
        if not ok:
            interval = f"{'(' if self.lo_open else '['}{self.lo}, {self.hi}{')' if self.hi_open else ']'}"
            raise ValueError(f"expected a number in {interval}, got {value!r}")


@attrs.frozen
class OneOf:
    """Validator: one of a fixed set of values."""

    choices: tuple[Any, ...]

    def __call__(self, _inst: Any, _attr: Any, value: Any) -> None:
        if value not in self.choices or type(value) not in {type(c) for c in self.choices}:
            listing = ", ".join(repr(c) for c in self.choices)
            close = difflib.get_close_matches(str(value), [str(c) for c in self.choices], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"expected one of {listing}, got {value!r}{hint}")


@attrs.frozen
class PluginName:
    """Validator: the name (or :class:`PluginRef`) of a registered plugin of ``kind``.

    ``extra`` lists further accepted names (e.g. ``"auto"`` for backends);
    with ``argument`` the name may carry one after a colon (``text:PATH``) and
    only the part before it is checked.
    """

    kind: str
    extra: tuple[str, ...] = ()
    argument: bool = False

    def __call__(self, _inst: Any, _attr: Any, value: Any) -> None:
        name = value.type if isinstance(value, PluginRef) else value
        if not isinstance(name, str):
            raise TypeError(f"expected a {self.kind} plugin name (a string), got {name!r}")
        if name in self.extra:
            return
        if self.argument:
            name = name.partition(":")[0]
        reg = get_registry()
        if (self.kind, name) not in reg:
            raise UnknownPluginError(self.kind, name, [*reg.names(self.kind), *self.extra])


@attrs.frozen
class Matches:
    """Validator: a string matching ``pattern`` in full; ``description`` says what
    is accepted."""

    pattern: str
    description: str

    def __call__(self, _inst: Any, _attr: Any, value: Any) -> None:
        if not isinstance(value, str) or not re.fullmatch(self.pattern, value):
            raise ValueError(f"expected {self.description}, got {value!r}")


@attrs.frozen
class _AllFinite:
    """Validator: no inf or nan float anywhere inside a (nested) table or array."""

    def __call__(self, _inst: Any, _attr: Any, value: Any) -> None:
        errors, stack = [], [("", value)]
        while stack:
            path, item = stack.pop()
            if isinstance(item, float) and not math.isfinite(item):
                errors.append((path, f"expected a finite number, got {item!r}"))
            elif isinstance(item, dict):
                stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in item.items())
            elif isinstance(item, (list, tuple)):
                stack.extend((f"{path}[{i}]", v) for i, v in enumerate(item))
        if errors:
            raise SpecError(sorted(errors))


positive_int = _PositiveInt()
"""attrs validator: an int ≥ 1 (``expected a positive int, got 0``)."""

non_negative = _NonNegative()
"""attrs validator: a finite number ≥ 0."""

all_finite = _AllFinite()
"""attrs validator: every float inside the value (a table, an array) is finite;
the errors are a :class:`SpecError` with paths relative to the field."""


def in_range(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> InRange:
    """attrs validator: a number in ``[lo, hi]`` (open ends on request)."""
    return InRange(lo, hi, lo_open, hi_open)


def one_of(*choices: Any) -> OneOf:
    """attrs validator: the value is one of ``choices`` (same type, no ``1 == True``)."""
    return OneOf(tuple(choices))


def plugin_name(kind: str, *, extra: Iterable[str] = (), argument: bool = False) -> PluginName:
    """attrs validator: a plugin name registered in ``kind`` (checked at validate time);
    ``argument=True`` accepts ``name:ARG`` (as data names such as ``text:PATH``)."""
    return PluginName(kind, tuple(extra), argument)


def matches(pattern: str, description: str) -> Matches:
    """attrs validator: a string matching the regular expression ``pattern`` in full."""
    return Matches(pattern, description)
