""":class:`SpecError` and the helpers that word its messages."""

from __future__ import annotations

import difflib
from typing import Any, Iterable

__all__ = ["SpecError", "join", "unknown_key_message", "typename"]


class SpecError(ValueError):
    """A spec is invalid: ``errors`` is a list of ``(key path, message)``.

    ``str()`` gives one line per error, ``path: message``; ``source`` names the
    file (or ``None``).
    """

    def __init__(self, errors: Iterable[tuple[str, str]], source: str | None = None):
        self.errors: list[tuple[str, str]] = [(str(p), str(m)) for p, m in errors]
        self.source = source
        super().__init__(str(self))

    def lines(self, prefix: str = "") -> list[str]:
        """One line per error, each starting with ``prefix``."""
        return [f"{prefix}{p}: {m}" if p else f"{prefix}{m}" for p, m in self.errors]

    def __str__(self) -> str:
        return "\n".join(self.lines())


def join(path: str, part: str) -> str:
    """``path`` extended by ``part`` (a key, or an ``[index]``)."""
    if not part:
        return path
    if part.startswith("["):
        return path + part
    return f"{path}.{part}" if path else part


def unknown_key_message(key: str, accepted: Iterable[str]) -> str:
    """``unknown key 'x'; did you mean 'y'? Accepted keys: ...``."""
    accepted = sorted(accepted)
    close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)
    listing = ", ".join(accepted) or "(none)"
    if close:
        return f"unknown key {key!r}; did you mean {close[0]!r}? Accepted keys: {listing}"
    return f"unknown key {key!r}; accepted keys: {listing}"


def typename(value: Any) -> str:
    return type(value).__name__
