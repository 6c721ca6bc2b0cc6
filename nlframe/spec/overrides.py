"""Command-line style overrides of a spec: ``KEY.PATH=VALUE``.

``model.dim=256``, ``train.lr=1e-3``, ``model.blocks[0].titans.chunk_size=64``:
a path of ``.key`` and ``[index]`` parts into the raw TOML data, and a value
parsed as a TOML value (``256``, ``1e-3``, ``"text"``, ``true``, ``[1, 2]``,
``{type = "mlp", hidden = 64}``); a bare word that is not TOML (``adamw``,
``text:data/a.txt``) is taken as a string. Missing tables on the path are
created; indices must exist.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Iterable, Mapping

from .errors import SpecError, join, typename

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["apply_overrides", "parse_override"]

_PART = re.compile(r"\.?([A-Za-z0-9_-]+)|\[(\d+)\]")
_BARE_WORD = re.compile(r"[^\s\"'\[\]{},#]+")
_SYNTAX = "expected KEY.PATH=VALUE, e.g. model.dim=256 or model.blocks[0].heads=4"


def _parse_path(key: str) -> list[str | int] | None:
    parts: list[str | int] = []
    pos = 0
    while pos < len(key):
        m = _PART.match(key, pos)
        if m is None or (m.group(1) is not None and (key[pos] == ".") != bool(parts)):
            return None  # a key part needs a dot before it, except the first
        parts.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    return parts if parts and isinstance(parts[0], str) else None


def _parse_value(text: str) -> Any:
    try:
        parsed = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError as exc:
        if _BARE_WORD.fullmatch(text):
            return text
        raise ValueError(str(exc)) from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if list(parsed) != ["v"]:
        raise ValueError("more than one value")
    return parsed["v"]


def _path_text(parts: list[str | int]) -> str:
    path = ""
    for p in parts:
        path = f"{path}[{p}]" if isinstance(p, int) else join(path, p)
    return path


def parse_override(override: str) -> tuple[list[str | int], Any]:
    """``"model.blocks[0].heads=4"`` → ``(["model", "blocks", 0, "heads"], 4)``.

    Raises :class:`SpecError` naming the override when its syntax is wrong.
    """
    if not isinstance(override, str):
        raise SpecError([("", f"override {override!r}: not a string; {_SYNTAX}")])
    key, eq, text = override.partition("=")
    key, text = key.strip(), text.strip()
    if not eq:
        raise SpecError([("", f"override {override!r}: no '='; {_SYNTAX}")])
    parts = _parse_path(key)
    if parts is None:
        raise SpecError([("", f"override {override!r}: malformed key path {key!r}; {_SYNTAX}")])
    if not text:
        raise SpecError([(_path_text(parts), f"override {override!r}: no value after '='")])
    try:
        return parts, _parse_value(text)
    except ValueError as exc:
        raise SpecError([(_path_text(parts), f"override {override!r}: invalid value "
                                             f"{text!r} ({exc})")]) from None


def _copy(node: Any) -> Any:
    if isinstance(node, Mapping):
        return dict(node)
    if isinstance(node, (list, tuple)):
        return list(node)
    return node


def _set(root: dict, parts: list[str | int], value: Any, override: str) -> None:
    """Set ``value`` at ``parts`` in ``root``, copying every container on the way."""
    node: Any = root
    path = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(part, str):
            if not isinstance(node, dict):
                raise SpecError([(path, f"override {override!r}: {path} is {node!r} "
                                        f"({typename(node)}), not a table")])
            here = join(path, part)
            if last:
                node[part] = value
                return
            if part not in node and isinstance(parts[i + 1], int):
                raise SpecError([(here, f"override {override!r}: {here} is not set; "
                                        "there is no array to index")])
            node[part] = child = _copy(node.get(part, {}))
        else:
            if not isinstance(node, list):
                raise SpecError([(path, f"override {override!r}: {path} is {node!r} "
                                        f"({typename(node)}), not an array")])
            here = f"{path}[{part}]"
            if part >= len(node):
                raise SpecError([(here, f"override {override!r}: index {part} out of range; "
                                        f"{path} has {len(node)} item{'s' * (len(node) != 1)}")])
            if last:
                node[part] = value
                return
            node[part] = child = _copy(node[part])
        node, path = child, here


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str] | str) -> dict:
    """A copy of the raw spec ``data`` with each ``KEY.PATH=VALUE`` override applied
    in order (``data`` is not modified).

    Raises :class:`SpecError` with one line per override that is malformed or
    does not fit the data (an index out of range, a key under a non-table).
    """
    if isinstance(overrides, str):
        overrides = (overrides,)
    root = dict(data)
    errors: list[tuple[str, str]] = []
    for override in overrides:
        try:
            parts, value = parse_override(override)
            _set(root, parts, value, override)
        except SpecError as exc:
            errors.extend(exc.errors)
    if errors:
        raise SpecError(errors)
    return root
