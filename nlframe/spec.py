"""Spec files: TOML → frozen attrs classes, with errors that name the key path.

A spec is data: plugins are referenced by registered name only, never by import
path. Layout::

    description = "optional free text"

    [model]                      # type = "lm" by default: a registered block
    vocab_size = 256             # ... whose Config has a `dim` field
    dim = 128

    [[model.blocks]]             # one table per block of the stack
    type = "attention"           # a registered block name (required)
    repeat = 2                   # optional: N independent copies (default 1)
    heads = 4                    # the block's own Config fields

    [[model.blocks]]
    type = "titans"
    memory = { type = "mlp", hidden = 64 }   # a PluginRef: name + options

    [train]                      # nlframe.train_config.TrainConfig

Every table is structured into a frozen attrs class; unknown keys, wrong types
(``"64"`` for an int, ``1`` for a bool), missing required keys, values rejected
by a field validator, unknown plugin names and cross-field problems
(``Config.check(dim)``) are all collected — not only the first — into one
:class:`SpecError` whose lines read ``model.blocks[1].heads: ...``.

Block authors: give the block class a ``Config`` (``@attrs.frozen(kw_only=True)``)
using the validators below (``positive_int``, ``non_negative``, ``in_range``,
``one_of``, ``plugin_name``) and, for checks that involve several fields or the
model width, a method ``check(self, dim) -> None`` raising
``ValueError("field.path: message")`` (path relative to the block). Fields typed
:class:`MemoryRef` / :class:`ObjectiveRef` / :class:`OptimizerRef` accept
``"name"`` or ``{type = "name", option = ...}``; ``BlockSpec`` (or a tuple of
them) nests blocks, which inherit the container's ``dim``. The keys ``type``
and ``repeat`` are reserved in block tables.
"""

from __future__ import annotations

import difflib
import inspect
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import (AttributeValidationNote, ClassValidationError,
                           ForbiddenExtraKeysError, IterableValidationError,
                           IterableValidationNote)

from .registry import UnknownPluginError, get_registry
from .train_config import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "Spec", "BlockSpec", "PluginRef", "MemoryRef", "ObjectiveRef", "OptimizerRef",
    "SpecError", "load_spec", "dump_spec", "spec_to_dict", "structure", "converter",
    "positive_int", "non_negative", "in_range", "one_of", "plugin_name",
]

RESERVED_BLOCK_KEYS = ("type", "repeat")


# --------------------------------------------------------------------------- errors
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


def _join(path: str, part: str) -> str:
    if not part:
        return path
    if part.startswith("["):
        return path + part
    return f"{path}.{part}" if path else part


# ----------------------------------------------------------------------- validators
def _typename(value: Any) -> str:
    return type(value).__name__


def _is_number(value: Any) -> bool:
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
        if not _is_number(value) or not math.isfinite(value) or value < 0:
            raise ValueError(f"expected a number >= 0, got {value!r}")


@attrs.frozen
class InRange:
    """Validator: a number in ``[lo, hi]`` (an end is excluded when ``*_open``)."""

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False

    def __call__(self, _inst: Any, _attr: Any, value: Any) -> None:
        ok = _is_number(value) and math.isfinite(value)
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

    ``extra`` lists further accepted names (e.g. ``"auto"`` for backends).
    """

    kind: str
    extra: tuple[str, ...] = ()

    def __call__(self, _inst: Any, _attr: Any, value: Any) -> None:
        name = value.type if isinstance(value, PluginRef) else value
        if not isinstance(name, str):
            raise TypeError(f"expected a {self.kind} plugin name (a string), got {name!r}")
        if name in self.extra:
            return
        reg = get_registry()
        if (self.kind, name) not in reg:
            raise UnknownPluginError(self.kind, name, [*reg.names(self.kind), *self.extra])


positive_int = _PositiveInt()
"""attrs validator: an int ≥ 1 (``expected a positive int, got 0``)."""

non_negative = _NonNegative()
"""attrs validator: a finite number ≥ 0."""


def in_range(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> InRange:
    """attrs validator: a number in ``[lo, hi]`` (open ends on request)."""
    return InRange(lo, hi, lo_open, hi_open)


def one_of(*choices: Any) -> OneOf:
    """attrs validator: the value is one of ``choices`` (same type, no ``1 == True``)."""
    return OneOf(tuple(choices))


def plugin_name(kind: str, *, extra: Iterable[str] = ()) -> PluginName:
    """attrs validator: a plugin name registered in ``kind`` (checked at validate time)."""
    return PluginName(kind, tuple(extra))


# ----------------------------------------------------------------- plugin references
@attrs.frozen
class PluginRef:
    """A plugin named in a spec with its options: ``"name"`` or ``{type = "name", ...}``.

    Subclasses fix the plugin ``kind``; the name is checked against the registry
    and the options against what the plugin accepts (an update rule's
    ``hyperparams``, a plugin ``Config`` class, or the constructor's keywords).
    """

    kind: ClassVar[str] = ""
    type: str
    options: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def cls(self) -> Any:
        """The registered plugin object."""
        return get_registry().get(self.kind, self.type)

    def build(self, *args: Any, **overrides: Any) -> Any:
        """Instantiate the plugin: ``cls(*args, **options, **overrides)``."""
        return self.cls(*args, **{**self.options, **overrides})


@attrs.frozen
class MemoryRef(PluginRef):
    """A memory plugin, built as ``ref.build(dim_k, dim_v)``."""

    kind: ClassVar[str] = "memory"


@attrs.frozen
class ObjectiveRef(PluginRef):
    """A surprise-objective plugin, built as ``ref.build()``."""

    kind: ClassVar[str] = "objective"


@attrs.frozen
class OptimizerRef(PluginRef):
    """An update-rule plugin, built as ``ref.build()`` (options are its defaults)."""

    kind: ClassVar[str] = "optimizer"


def _try_construct(kind: str, obj: Any, options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Errors from ``obj(**options)``, attributed to the one option that fails alone."""
    try:
        obj(**options)
        return []
    except (TypeError, ValueError) as exc:
        error = exc
    for key, value in options.items():
        try:
            obj(**{key: value})
        except (TypeError, ValueError) as exc:
            return [(key, f"invalid option for {kind} plugin: {exc}")]
    return [("", f"invalid options for {kind} plugin: {error}")]


def _check_plugin_options(kind: str, obj: Any, options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Errors (relative paths) for options the plugin ``obj`` does not accept."""
    from .interfaces import Objective, UpdateRule

    errors: list[tuple[str, str]] = []
    if isinstance(obj, type) and issubclass(obj, UpdateRule):
        accepted = sorted(obj.hyperparams)
        for key in sorted(set(options) - set(accepted)):
            errors.append((key, _unknown_key_message(key, accepted)))
        if not errors:
            errors = _try_construct(kind, obj, options)
        return errors
    config = getattr(obj, "Config", None)
    if config is not None and attrs.has(config):
        try:
            structure(dict(options), config)
        except SpecError as exc:
            errors.extend(exc.errors)
        return errors
    if isinstance(obj, type) and issubclass(obj, Objective):
        return _try_construct(kind, obj, options)
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins without signature
        return errors
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return errors
    accepted = sorted(p.name for p in params if p.kind is p.KEYWORD_ONLY or (  # not dim_k/dim_v
        p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty))
    for key in sorted(set(options) - set(accepted)):
        errors.append((key, _unknown_key_message(key, accepted)))
    return errors


# ---------------------------------------------------------------------- block specs
@attrs.frozen
class BlockSpec:
    """One ``[[...blocks]]`` table: a registered block ``type``, its ``Config``
    instance and ``repeat`` (independent copies stacked)."""

    type: str
    config: Any
    repeat: int = attrs.field(default=1, validator=positive_int)

    @property
    def cls(self) -> Any:
        return get_registry().get("block", self.type)


@attrs.frozen(kw_only=True)
class Spec:
    """A whole spec: ``model`` (a :class:`BlockSpec`, type ``lm`` by default),
    ``train`` (:class:`~nlframe.train_config.TrainConfig`), an optional
    ``description``; ``source`` is the file it came from (not compared)."""

    model: BlockSpec
    train: TrainConfig = attrs.field(factory=TrainConfig)
    description: str = ""
    source: str | None = attrs.field(default=None, eq=False, metadata={"internal": True})


# ----------------------------------------------------------------------- converter
def _unknown_key_message(key: str, accepted: Iterable[str]) -> str:
    accepted = sorted(accepted)
    close = difflib.get_close_matches(key, accepted, n=1, cutoff=0.6)
    listing = ", ".join(accepted) or "(none)"
    if close:
        return f"unknown key {key!r}; did you mean {close[0]!r}? Accepted keys: {listing}"
    return f"unknown key {key!r}; accepted keys: {listing}"


def _note(exc: BaseException, note: str) -> BaseException:
    exc.add_note(note)
    return exc


def _strict(kind: type, label: str):
    def hook(value: Any, _cl: Any) -> Any:
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float:
            ok = _is_number(value)
        if not ok:
            raise TypeError(f"expected {label}, got {value!r} ({_typename(value)})")
        return float(value) if kind is float else value

    return hook


def _structure_dict(value: Any, cl: Any) -> dict:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a table, got {value!r} ({_typename(value)})")
    args = get_args(cl)
    if len(args) != 2:
        return dict(value)
    out, errors = {}, []
    for key, item in value.items():
        try:
            out[_converter.structure(key, args[0])] = _converter.structure(item, args[1])
        except Exception as exc:  # noqa: BLE001 - collected, reported with the key path
            errors.append(_note(exc, AttributeValidationNote(f"key {key}", str(key), args[1])))
    if errors:
        raise ClassValidationError(f"While structuring {cl}", errors, dict)
    return out


def _structure_seq(value: Any, cl: Any) -> Any:
    origin = get_origin(cl) or cl
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"expected an array, got {value!r} ({_typename(value)})")
    args = get_args(cl)
    fixed = origin is tuple and bool(args) and args[-1] is not Ellipsis
    if fixed and len(value) != len(args):
        raise ValueError(f"expected an array of {len(args)} items, got {len(value)}")
    out, errors = [], []
    for i, item in enumerate(value):
        item_type = args[i] if fixed else (args[0] if args else Any)
        try:
            out.append(item if item_type is Any else _converter.structure(item, item_type))
        except Exception as exc:  # noqa: BLE001
            errors.append(_note(exc, IterableValidationNote(f"index {i}", i, item_type)))
    if errors:
        raise IterableValidationError(f"While structuring {cl}", errors, cl)
    return tuple(out) if origin is tuple else out


def _run_validators(cl: type, values: dict[str, Any]) -> list[BaseException]:
    errors = []
    for field in attrs.fields(cl):
        if field.validator is None or field.alias not in values:
            continue
        try:
            field.validator(None, field, values[field.alias])
        except Exception as exc:  # noqa: BLE001
            errors.append(_note(exc, AttributeValidationNote(field.alias, field.alias, field.type)))
    return errors


def _make_attrs_hook(cl: type):
    """Structure a table into the attrs class ``cl``, collecting every error."""
    attrs.resolve_types(cl)
    fields = [f for f in attrs.fields(cl) if f.init and not f.metadata.get("internal")]
    accepted = [f.alias for f in fields]

    def hook(value: Any, _cl: Any) -> Any:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected a table, got {value!r} ({_typename(value)})")
        errors: list[BaseException] = []
        values: dict[str, Any] = {}
        for f in fields:
            if f.alias not in value:
                if f.default is attrs.NOTHING:
                    errors.append(_note(KeyError(f.alias),
                                        AttributeValidationNote(f.alias, f.alias, f.type)))
                continue
            try:
                values[f.alias] = _converter.structure(value[f.alias], f.type)
            except Exception as exc:  # noqa: BLE001
                errors.append(_note(exc, AttributeValidationNote(f.alias, f.alias, f.type)))
        extra = set(value) - set(accepted)
        if extra:
            errors.append(ForbiddenExtraKeysError("", cl, extra))
        errors.extend(_run_validators(cl, values))
        if errors:
            raise ClassValidationError(f"While structuring {cl.__name__}", errors, cl)
        try:
            return cl(**values)
        except Exception as exc:  # noqa: BLE001 - a validator using other fields
            raise ClassValidationError(f"While structuring {cl.__name__}", [exc], cl) from None

    return hook


def _structure_plugin_ref(value: Any, cl: type[PluginRef]) -> PluginRef:
    kind = cl.kind
    if isinstance(value, str):
        name, options = value, {}
    elif isinstance(value, Mapping):
        if "type" not in value:
            raise SpecError([("type", f"missing required key (the {kind} plugin's registered name)")])
        name, options = value["type"], {k: v for k, v in value.items() if k != "type"}
    else:
        raise TypeError(f"expected a {kind} plugin name or a table with 'type', "
                        f"got {value!r} ({_typename(value)})")
    where = "type" if isinstance(value, Mapping) else ""  # table form: errors at `.type`
    if not isinstance(name, str):
        raise SpecError([(where, f"expected a {kind} plugin name (a string), got {name!r}")])
    reg = get_registry()
    if (kind, name) not in reg:
        raise SpecError([(where, UnknownPluginError(kind, name, reg.names(kind)).message)])
    errors = _check_plugin_options(kind, reg.get(kind, name), options)
    if errors:
        raise SpecError(errors)
    return cl(type=name, options=dict(options))


def _structure_block(value: Any, _cl: Any) -> BlockSpec:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a block table with a 'type' key, got {value!r} "
                        f"({_typename(value)})")
    reg = get_registry()
    if "type" not in value:
        raise SpecError([("type", "missing required key (the block's registered name; "
                                  f"registered blocks: {', '.join(reg.names('block'))})")])
    name = value["type"]
    if not isinstance(name, str):
        raise SpecError([("type", f"expected a block name (a string), got {name!r}")])
    if ("block", name) not in reg:
        raise SpecError([("type", UnknownPluginError("block", name, reg.names("block")).message)])
    cls = reg.get("block", name)
    config_cls = getattr(cls, "Config", None)
    if config_cls is None or not attrs.has(config_cls):
        raise SpecError([("type", f"block {name!r} has no attrs Config class; it cannot be "
                                  "built from a spec")])
    errors: list[tuple[str, str]] = []
    repeat = value.get("repeat", 1)
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        errors.append(("repeat", f"expected a positive int, got {repeat!r}"))
    rest = {k: v for k, v in value.items() if k not in RESERVED_BLOCK_KEYS}
    config = None
    try:
        config = _converter.structure(rest, config_cls)
    except Exception as exc:  # noqa: BLE001
        errors.extend(_collect(exc))
    if errors:
        raise SpecError(errors)
    return BlockSpec(type=name, config=config, repeat=repeat)


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    conv.register_structure_hook(int, _strict(int, "an int"))
    conv.register_structure_hook(float, _strict(float, "a number"))
    conv.register_structure_hook(str, _strict(str, "a string"))
    conv.register_structure_hook(bool, _strict(bool, "true or false"))
    conv.register_structure_hook_func(
        lambda t: (get_origin(t) or t) in (list, tuple) and t is not str, _structure_seq)
    conv.register_structure_hook_func(
        lambda t: (get_origin(t) or t) in (dict, Mapping), _structure_dict)
    conv.register_structure_hook(BlockSpec, _structure_block)
    conv.register_structure_hook_func(
        lambda t: isinstance(t, type) and issubclass(t, PluginRef), _structure_plugin_ref)
    conv.register_structure_hook_factory(
        lambda t: attrs.has(t) and not issubclass(t, (PluginRef, BlockSpec)), _make_attrs_hook)
    conv.register_unstructure_hook(BlockSpec, lambda b: {
        "type": b.type, **({"repeat": b.repeat} if b.repeat != 1 else {}),
        **conv.unstructure(b.config)})
    conv.register_unstructure_hook_func(
        lambda t: isinstance(t, type) and issubclass(t, PluginRef),
        lambda r: r.type if not r.options else {"type": r.type, **conv.unstructure(dict(r.options))})
    return conv


_converter = _make_converter()


def converter() -> cattrs.Converter:
    """The strict converter used for specs (register hooks for custom field types here)."""
    return _converter


# --------------------------------------------------------------- error path extraction
def _collect(exc: BaseException, path: str = "") -> list[tuple[str, str]]:
    """Flatten a (nested) structuring error into ``(path, message)`` pairs."""
    if isinstance(exc, SpecError):
        return [(_join(path, p) if p else path, m) for p, m in exc.errors]
    if isinstance(exc, ForbiddenExtraKeysError):
        accepted = ([f.alias for f in attrs.fields(exc.cl) if f.init and not f.metadata.get("internal")]
                    if attrs.has(exc.cl) else [])
        keys = sorted(str(k) for k in exc.extra_fields)
        return [(_join(path, k), _unknown_key_message(k, accepted)) for k in keys]
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        out: list[tuple[str, str]] = []
        for sub in exc.exceptions:
            sub_path = path
            for note in getattr(sub, "__notes__", []):
                if isinstance(note, AttributeValidationNote):
                    sub_path = _join(path, note.name)
                elif isinstance(note, IterableValidationNote):
                    sub_path = f"{path}[{note.index}]"
            out.extend(_collect(sub, sub_path))
        return out
    if isinstance(exc, UnknownPluginError):
        return [(path, exc.message)]
    if isinstance(exc, KeyError):
        return [(path, "missing required key")]
    message = str(exc) or type(exc).__name__
    last = path.rsplit(".", 1)[-1].split("[", 1)[0]
    if last and message.startswith(f"{last}: "):  # validators that prefix their field name
        message = message[len(last) + 2:]
    return [(path, message)]


_REL_PATH = re.compile(r"^([A-Za-z_]\w*(?:\[\d+\])*(?:\.[A-Za-z_]\w*(?:\[\d+\])*)*): (.+)$", re.S)


def _check_errors(config: Any, dim: int | None, exc: Exception, path: str) -> list[tuple[str, str]]:
    if isinstance(exc, SpecError):
        return [(_join(path, p), m) for p, m in exc.errors]
    message = str(exc)
    m = _REL_PATH.match(message)
    names = {f.name for f in attrs.fields(type(config))} | {f.alias for f in attrs.fields(type(config))}
    if m and m.group(1).split(".")[0].split("[")[0] in names:
        return [(_join(path, m.group(1)), m.group(2))]
    return [(path, message)]


def check_block(block: BlockSpec, dim: int | None, path: str) -> list[tuple[str, str]]:
    """Cross-field errors of ``block`` and its nested blocks (``Config.check(dim)``)."""
    errors: list[tuple[str, str]] = []
    config = block.config
    check = getattr(config, "check", None)
    if callable(check):
        try:
            check(dim)
        except (ValueError, TypeError) as exc:
            errors.extend(_check_errors(config, dim, exc, path))
        except Exception as exc:  # noqa: BLE001 - a bug in a plugin's check, still no traceback
            errors.append((path, f"{block.type}.Config.check failed: {type(exc).__name__}: {exc}"))
    for field in attrs.fields(type(config)):
        value = getattr(config, field.name)
        if isinstance(value, BlockSpec):
            errors.extend(check_block(value, dim, _join(path, field.name)))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if isinstance(item, BlockSpec):
                    errors.extend(check_block(item, dim, f"{_join(path, field.name)}[{i}]"))
    return errors


# --------------------------------------------------------------------------- loading
def structure(data: Any, cl: Any, path: str = "") -> Any:
    """Structure ``data`` into ``cl`` with the strict spec rules; errors → :class:`SpecError`."""
    try:
        return _converter.structure(data, cl)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a path-labelled error
        raise SpecError(_collect(exc, path)) from None


def _read_source(source: Any) -> tuple[dict, str | None]:
    if isinstance(source, Spec):
        return spec_to_dict(source), source.source
    if isinstance(source, Mapping):
        return dict(source), None
    if isinstance(source, (str, os.PathLike)):
        text, origin = None, None
        if isinstance(source, os.PathLike) or os.path.exists(source) or (
                "\n" not in source and source.rstrip().endswith(".toml")) or not (
                "=" in source or "[" in source):
            origin = os.fspath(source)
            try:
                text = Path(origin).read_text(encoding="utf-8")
            except OSError as exc:
                raise FileNotFoundError(f"cannot read spec file {origin!r}: {exc.strerror or exc}") from None
        else:
            text = source
        try:
            return tomllib.loads(text), origin
        except tomllib.TOMLDecodeError as exc:
            raise SpecError([("", f"invalid TOML: {exc}")], source=origin) from None
    raise TypeError(f"load_spec: expected a path, TOML text, a dict or a Spec; "
                    f"got {_typename(source)}")


def load_spec(source: Any) -> Spec:
    """Read and validate a spec without building it.

    ``source``: a path to a ``.toml`` file, TOML text, a dict, or a :class:`Spec`.
    Raises :class:`SpecError` listing every problem with its key path.
    """
    data, origin = _read_source(source)
    if "model" in data and isinstance(data["model"], Mapping) and "type" not in data["model"]:
        data = {**data, "model": {"type": "lm", **data["model"]}}
    errors: list[tuple[str, str]] = []
    try:
        spec = _converter.structure(data, Spec)
    except Exception as exc:  # noqa: BLE001
        raise SpecError(_collect(exc), source=origin) from None
    model_fields = {f.name for f in attrs.fields(type(spec.model.config))}
    if "dim" not in model_fields:
        errors.append(("model.type", f"block {spec.model.type!r} cannot be a model: its Config "
                                     "has no 'dim' (use type = \"lm\" and put it in "
                                     "[[model.blocks]])"))
    elif spec.model.repeat != 1:
        errors.append(("model.repeat", "a model cannot be repeated; repeat blocks instead"))
    else:
        errors.extend(check_block(spec.model, spec.model.config.dim, "model"))
    if errors:
        raise SpecError(errors, source=origin)
    return attrs.evolve(spec, source=origin)


def spec_to_dict(spec: Spec) -> dict:
    """The resolved spec (every default filled) as plain TOML-ready data.

    ``None`` values are left out (TOML has no null; such fields default to ``None``).
    """
    data = {"description": spec.description, "model": _converter.unstructure(spec.model),
            "train": _converter.unstructure(spec.train)}
    if not spec.description:
        del data["description"]
    return _drop_none(data)


def _drop_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_none(v) for v in value]
    return value


def dump_spec(spec: Spec) -> str:
    """The resolved spec as TOML text (round-trips through :func:`load_spec`).

    Arrays of tables such as ``model.blocks`` are written as ``[[model.blocks]]``
    sections, one per block, in the layout a person would write.
    """
    return _dump_table(spec_to_dict(spec), ()).lstrip("\n")


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _dump_table(table: Mapping[str, Any], path: tuple[str, ...], header: str = "") -> str:
    import json

    import tomli_w

    def key(k: str) -> str:
        return k if _BARE_KEY.match(k) else json.dumps(k)

    inline = {k: v for k, v in table.items() if not (isinstance(v, Mapping) or _is_table_array(v))}
    text = header + tomli_w.dumps(inline)
    for k, v in table.items():
        sub = (*path, k)
        name = ".".join(key(p) for p in sub)
        if isinstance(v, Mapping):
            text += _dump_table(v, sub, f"\n[{name}]\n")
        elif _is_table_array(v):
            for item in v:
                text += _dump_table(item, sub, f"\n[[{name}]]\n")
    return text
