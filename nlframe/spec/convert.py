"""The strict cattrs converter, its hooks, and key paths for every error.

Tables are structured into attrs classes collecting every problem; cattrs'
nested exceptions are flattened by :func:`collect` into ``(path, message)``
pairs. Cross-field checks (a ``Config.check`` method) run after structuring.
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any, Mapping, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import (AttributeValidationNote, ClassValidationError,
                           ForbiddenExtraKeysError, IterableValidationError,
                           IterableValidationNote)

from ..registry import UnknownPluginError, get_registry
from .errors import SpecError, join, typename, unknown_key_message
from .refs import PluginRef
from .schema import RESERVED_BLOCK_KEYS, BlockSpec
from .validators import is_number

__all__ = ["converter", "structure", "collect", "check_block", "check_config",
           "check_plugin_options"]


# ------------------------------------------------------------------ plugin options
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


def check_plugin_options(kind: str, obj: Any, options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Errors (paths relative to the options) for options the plugin ``obj`` does
    not accept: an update rule's ``hyperparams``, a ``Config`` class, or the
    constructor's keywords."""
    from ..interfaces import Objective, UpdateRule

    errors: list[tuple[str, str]] = []
    if isinstance(obj, type) and issubclass(obj, UpdateRule):
        accepted = sorted(obj.hyperparams)
        for key in sorted(set(options) - set(accepted)):
            errors.append((key, unknown_key_message(key, accepted)))
        return errors or _try_construct(kind, obj, options)
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
        errors.append((key, unknown_key_message(key, accepted)))
    return errors


# --------------------------------------------------------------------------- hooks
def _note(exc: BaseException, note: Any) -> BaseException:
    exc.add_note(note)
    return exc


def _strict(kind: type, label: str):
    def hook(value: Any, _cl: Any) -> Any:
        ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
        if kind is float:
            ok = is_number(value)
            if ok and not math.isfinite(value):
                raise ValueError(f"expected a finite number, got {value!r}")
        if not ok:
            raise TypeError(f"expected {label}, got {value!r} ({typename(value)})")
        return float(value) if kind is float else value

    return hook


def _structure_dict(value: Any, cl: Any) -> dict:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a table, got {value!r} ({typename(value)})")
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
        raise TypeError(f"expected an array, got {value!r} ({typename(value)})")
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


def _accepted(cl: type) -> list[str]:
    return [f.alias for f in attrs.fields(cl) if f.init and not f.metadata.get("internal")]


def _make_attrs_hook(cl: type):
    """Structure a table into the attrs class ``cl``, collecting every error."""
    attrs.resolve_types(cl)
    fields = [f for f in attrs.fields(cl) if f.init and not f.metadata.get("internal")]
    accepted = _accepted(cl)

    def hook(value: Any, _cl: Any) -> Any:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected a table, got {value!r} ({typename(value)})")
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
                        f"got {value!r} ({typename(value)})")
    where = "type" if isinstance(value, Mapping) else ""  # table form: errors at `.type`
    if not isinstance(name, str):
        raise SpecError([(where, f"expected a {kind} plugin name (a string), got {name!r}")])
    reg = get_registry()
    if (kind, name) not in reg:
        raise SpecError([(where, UnknownPluginError(kind, name, reg.names(kind)).message)])
    errors = check_plugin_options(kind, reg.get(kind, name), options)
    if errors:
        raise SpecError(errors)
    return cl(type=name, options=dict(options))


def _structure_block(value: Any, _cl: Any) -> BlockSpec:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a block table with a 'type' key, got {value!r} "
                        f"({typename(value)})")
    reg = get_registry()
    if "type" not in value:
        raise SpecError([("type", "missing required key (the block's registered name; "
                                  f"registered blocks: {', '.join(reg.names('block'))})")])
    name = value["type"]
    if not isinstance(name, str):
        raise SpecError([("type", f"expected a block name (a string), got {name!r}")])
    if ("block", name) not in reg:
        raise SpecError([("type", UnknownPluginError("block", name, reg.names("block")).message)])
    config_cls = getattr(reg.get("block", name), "Config", None)
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
        errors.extend(collect(exc))
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
def collect(exc: BaseException, path: str = "") -> list[tuple[str, str]]:
    """Flatten a (nested) structuring error into ``(path, message)`` pairs."""
    if isinstance(exc, SpecError):
        return [(join(path, p) if p else path, m) for p, m in exc.errors]
    if isinstance(exc, ForbiddenExtraKeysError):
        accepted = _accepted(exc.cl) if attrs.has(exc.cl) else []
        keys = sorted(str(k) for k in exc.extra_fields)
        return [(join(path, k), unknown_key_message(k, accepted)) for k in keys]
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        out: list[tuple[str, str]] = []
        for sub in exc.exceptions:
            sub_path = path
            for note in getattr(sub, "__notes__", []):
                if isinstance(note, AttributeValidationNote):
                    sub_path = join(path, note.name)
                elif isinstance(note, IterableValidationNote):
                    sub_path = f"{path}[{note.index}]"
            out.extend(collect(sub, sub_path))
        return out
    if isinstance(exc, UnknownPluginError):
        return [(path, exc.message)]
    if isinstance(exc, KeyError):
        return [(path, "missing required key")]
    if isinstance(exc, RecursionError):
        return [(path, "nested too deeply")]
    message = str(exc) or type(exc).__name__
    last = path.rsplit(".", 1)[-1].split("[", 1)[0]
    if last and message.startswith(f"{last}: "):  # validators that prefix their field name
        message = message[len(last) + 2:]
    return [(path, message)]


def structure(data: Any, cl: Any, path: str = "") -> Any:
    """Structure ``data`` into ``cl`` with the strict spec rules; errors → :class:`SpecError`."""
    try:
        return _converter.structure(data, cl)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a path-labelled error
        raise SpecError(collect(exc, path)) from None


# ------------------------------------------------------------------ cross-field checks
_REL_PATH = re.compile(r"^([A-Za-z_]\w*(?:\[\d+\])*(?:\.[A-Za-z_]\w*(?:\[\d+\])*)*): (.+)$", re.S)


def _check_errors(config: Any, exc: Exception, path: str) -> list[tuple[str, str]]:
    if isinstance(exc, SpecError):
        return [(join(path, p), m) for p, m in exc.errors]
    message = str(exc)
    m = _REL_PATH.match(message)
    names = {f.name for f in attrs.fields(type(config))} | {f.alias for f in attrs.fields(type(config))}
    if m and m.group(1).split(".")[0].split("[")[0] in names:
        return [(join(path, m.group(1)), m.group(2))]
    return [(path, message)]


def check_config(config: Any, path: str, *args: Any, label: str = "") -> list[tuple[str, str]]:
    """Errors of ``config.check(*args)`` (if it has one), at paths under ``path``.

    ``check`` raises ``ValueError("field.path: message")`` or a :class:`SpecError`
    with relative paths; any other exception is reported as a failed check.
    """
    check = getattr(config, "check", None)
    if not callable(check):
        return []
    try:
        check(*args)
    except (ValueError, TypeError) as exc:
        return _check_errors(config, exc, path)
    except Exception as exc:  # noqa: BLE001 - a bug in a plugin's check, still no traceback
        name = label or type(config).__qualname__
        return [(path, f"{name}.check failed: {type(exc).__name__}: {exc}")]
    return []


def child_blocks(config: Any) -> list[tuple[str, int | None, BlockSpec]]:
    """``(field, index or None, block)`` for each :class:`BlockSpec` in ``config``'s fields."""
    out: list[tuple[str, int | None, BlockSpec]] = []
    for field in attrs.fields(type(config)):
        value = getattr(config, field.name)
        if isinstance(value, BlockSpec):
            out.append((field.name, None, value))
        elif isinstance(value, (list, tuple)):
            out.extend((field.name, i, v) for i, v in enumerate(value) if isinstance(v, BlockSpec))
    return out


def check_block(block: BlockSpec, dim: int | None, path: str) -> list[tuple[str, str]]:
    """Cross-field errors of ``block`` and its nested blocks (``Config.check(dim)``)."""
    errors = check_config(block.config, path, dim, label=f"{block.type}.Config")
    for name, i, child in child_blocks(block.config):
        where = join(path, name) + (f"[{i}]" if i is not None else "")
        errors.extend(check_block(child, dim, where))
    return errors
