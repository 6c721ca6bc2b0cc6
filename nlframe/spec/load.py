"""Reading and validating a spec: :func:`load_spec`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

import attrs

from .convert import check_block, check_config, collect, converter
from .errors import SpecError, typename
from .overrides import apply_overrides
from .schema import Spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["load_spec", "read_source", "MAX_DEPTH"]

MAX_DEPTH = 64
"""Deepest nesting of tables and arrays a spec may have (a spec needs a handful)."""


def _too_deep(data: Any, limit: int = MAX_DEPTH) -> str | None:
    """The key path of the first value nested more than ``limit`` levels deep, or
    ``None`` (iterative: deep and self-referencing data cannot overflow the stack)."""
    stack = [(data, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, Mapping):
            items = [(f"{path}.{k}" if path else str(k), v) for k, v in node.items()]
        elif isinstance(node, (list, tuple)):
            items = [(f"{path}[{i}]", v) for i, v in enumerate(node)]
        else:
            continue
        if depth >= limit:
            return path
        stack.extend((v, p, depth + 1) for p, v in items)
    return None


def _parse(text: str, origin: str | None) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError([("", f"invalid TOML: {exc}")], source=origin) from None
    except RecursionError:
        raise SpecError([("", "invalid TOML: arrays or tables nested too deeply")],
                        source=origin) from None


def read_source(source: Any) -> tuple[dict, str | None]:
    """``(raw data, file name or None)`` of a path, TOML text, a dict or a :class:`Spec`."""
    from .dump import spec_to_dict

    if isinstance(source, Spec):
        return spec_to_dict(source), source.source
    if isinstance(source, Mapping):
        return dict(source), None
    if isinstance(source, (str, os.PathLike)):
        if isinstance(source, os.PathLike) or os.path.exists(source) or (
                "\n" not in source and source.rstrip().endswith(".toml")) or not (
                "=" in source or "[" in source):
            origin = os.fspath(source)
            try:
                text = Path(origin).read_text(encoding="utf-8")
            except OSError as exc:
                raise FileNotFoundError(f"cannot read spec file {origin!r}: {exc.strerror or exc}") from None
            return _parse(text, origin), origin
        return _parse(source, None), None
    raise TypeError(f"load_spec: expected a path, TOML text, a dict or a Spec; "
                    f"got {typename(source)}")


def load_spec(source: Any, overrides: Iterable[str] = ()) -> Spec:
    """Read and validate a spec without building it.

    ``source``: a path to a ``.toml`` file, TOML text, a dict, or a :class:`Spec`.
    ``overrides``: ``KEY.PATH=VALUE`` strings (``"model.dim=256"``,
    ``"model.blocks[0].heads=4"``) applied to the raw data first, see
    :func:`~nlframe.spec.apply_overrides`; the result is validated like a file.
    Raises :class:`SpecError` listing every problem with its key path.
    """
    data, origin = read_source(source)
    try:
        data = apply_overrides(data, overrides)
    except SpecError as exc:
        raise SpecError(exc.errors, source=origin) from None
    deep = _too_deep(data)
    if deep is not None:
        where = deep if len(deep) <= 60 else deep[:60] + "..."
        raise SpecError([(where, f"nested more than {MAX_DEPTH} tables or arrays deep")],
                        source=origin)
    if "model" in data and isinstance(data["model"], Mapping) and "type" not in data["model"]:
        data = {**data, "model": {"type": "lm", **data["model"]}}
    try:
        spec = converter().structure(data, Spec)
    except Exception as exc:  # noqa: BLE001
        raise SpecError(collect(exc), source=origin) from None
    errors: list[tuple[str, str]] = []
    model_fields = {f.name for f in attrs.fields(type(spec.model.config))}
    if "dim" not in model_fields:
        errors.append(("model.type", f"block {spec.model.type!r} cannot be a model: its Config "
                                     "has no 'dim' (use type = \"lm\" and put it in "
                                     "[[model.blocks]])"))
    elif spec.model.repeat != 1:
        errors.append(("model.repeat", "a model cannot be repeated; repeat blocks instead"))
    else:
        errors.extend(check_block(spec.model, spec.model.config.dim, "model"))
    errors.extend(check_config(spec.train, "train"))
    if errors:
        raise SpecError(errors, source=origin)
    return attrs.evolve(spec, source=origin)
