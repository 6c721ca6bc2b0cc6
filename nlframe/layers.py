"""Blocks as ordinary PyTorch layers, and their fast state (docs/interop.md).

``layer("titans", 64, heads=4, memory={"type": "mlp", "hidden": 128})`` is the
registered block ``cls(config, dim)``, its options validated exactly like a
``[[model.blocks]]`` table of a spec (same :class:`~nlframe.spec.SpecError`
lines, ``memory.hiden: unknown key 'hiden'; ...``). It is called as
``y, state = layer(x, state)``: ``state=None`` starts every sequence of the
batch fresh (a reset), and the returned state continues the stream, so
``[x1; x2]`` in one call equals ``x1`` then ``x2``.

A state is nested dicts / lists / tuples of tensors, numbers, ``None`` and
state objects (:class:`~nlframe.level.MemoryState`, the blocks' ``BoundaryState``).
:func:`init_state` makes the fresh one explicit, :func:`detach_state` cuts its
autograd history between calls (truncated backprop through time),
:func:`state_to` moves or casts it, and :func:`state_to_dict` /
:func:`state_from_dict` save it as a flat ``name → tensor`` dict that
``safetensors.torch.save_file`` and ``torch.load(weights_only=True)`` accept.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import attrs
import torch
from torch import Tensor, nn

from .level import MemoryState, tree_map
from .registry import UnknownPluginError, get_registry
from .spec import BlockSpec, SpecError, check_block, structure

__all__ = ["layer", "init_state", "detach_state", "state_to", "map_state", "state_to_dict",
           "state_from_dict", "register_state_class", "STRUCTURE_KEY"]

STRUCTURE_KEY = "__structure__"
"""Key of :func:`state_to_dict`'s entry holding the state's layout (UTF-8 JSON bytes)."""

_STATE_CLASSES: dict[str, type] = {"MemoryState": MemoryState}


def register_state_class(cls: type) -> type:
    """Let :func:`state_to_dict` save instances of ``cls`` (a block's state object with
    ``map(fn)``, ``state_dict()`` and the classmethod ``from_state_dict(d)``)."""
    for method in ("map", "state_dict", "from_state_dict"):
        if not callable(getattr(cls, method, None)):
            raise TypeError(f"register_state_class: {cls.__name__} has no {method}()")
    known = _STATE_CLASSES.setdefault(cls.__name__, cls)
    if known is not cls:
        raise ValueError(f"register_state_class: another class is registered as {cls.__name__!r}")
    return cls


# ------------------------------------------------------------------------ layers
def layer(name: str, dim: int, /, **options: Any) -> nn.Module:
    """The registered block ``name`` of width ``dim``, ``options`` as in its spec table
    (nested tables as dicts; plugins as ``"name"`` or ``{"type": "name", ...}``).

    Raises :class:`~nlframe.spec.SpecError` with one ``key.path: message`` line per
    problem (unknown keys, wrong types, unknown plugins, ``Config.check(dim)``).
    """
    reg = get_registry()
    if not isinstance(name, str) or ("block", name) not in reg:
        raise SpecError([("", UnknownPluginError("block", str(name), reg.names("block")).message)])
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"layer {name!r}: dim must be a positive int, got {dim!r}")
    cls = reg.get("block", name)
    config_cls = getattr(cls, "Config", None)
    if config_cls is None or not attrs.has(config_cls):
        raise TypeError(f"block {name!r} has no attrs Config class; it cannot be built by name")
    if "dim" in attrs.fields_dict(config_cls):  # a model-like block (lm) carries dim itself
        if options.setdefault("dim", dim) != dim:
            raise SpecError([("dim", f"the layer's width is {dim}, got {options['dim']!r}")])
    config = structure(options, config_cls)
    errors = check_block(BlockSpec(type=name, config=config), dim, "")
    if errors:
        raise SpecError(errors)
    return cls(config, dim)


def init_state(layer: nn.Module, batch: int, *, device: Any = None,
               dtype: torch.dtype | None = None) -> Any:
    """The fresh state ``state=None`` stands for, made explicit: the state after a call on
    zero tokens, ``x (batch, 0, dim)`` (``tokens (batch, 0)`` for an ``lm``), on the
    layer's device and dtype unless given. It starts from the layer's learned initial
    fast weights, so make it for each new batch of sequences."""
    p = next(layer.parameters(), None)
    device = device if device is not None else (p.device if p is not None else None)
    dtype = dtype or (p.dtype if p is not None else torch.get_default_dtype())
    if isinstance(getattr(layer, "embed", None), nn.Embedding):
        x = torch.zeros(batch, 0, dtype=torch.long, device=device)
    else:
        x = torch.zeros(batch, 0, layer.dim, dtype=dtype, device=device)
    return layer(x)[1]


# ------------------------------------------------------------------------- state
def map_state(fn: Callable[[Tensor], Tensor], state: Any) -> Any:
    """``state`` with ``fn`` applied to every tensor, inside state objects too."""
    classes = tuple(_STATE_CLASSES.values())
    return tree_map(fn, state, leaf=lambda x: x.map(fn) if type(x) in classes else x)


def detach_state(state: Any) -> Any:
    """``state`` cut from its autograd history (carry it into the next training step)."""
    return map_state(Tensor.detach, state)


def state_to(state: Any, *args: Any, **kwargs: Any) -> Any:
    """``state`` with every tensor moved / cast like ``Tensor.to(*args, **kwargs)``."""
    return map_state(lambda t: t.to(*args, **kwargs), state)


def state_to_dict(state: Any) -> dict[str, Tensor]:
    """``state`` as a flat ``name → tensor`` dict (safetensors-compatible).

    Tensors are named by their path (``"memory.params.W1"``, ``"2.attention.k"``),
    detached and contiguous, each stored once (a tensor held twice, as ``params`` and
    ``chunk_params`` at a chunk boundary, comes back shared). Everything else — ints
    (positions, steps), floats, ``None``, strings, which containers and state classes
    hold what — is kept exactly in :data:`STRUCTURE_KEY` as UTF-8 JSON (uint8).
    The last call's ``surprise`` diagnostic is not state and is not saved.
    """
    tensors: dict[str, Tensor] = {}
    names: dict[int, str] = {}
    storages: set[tuple[str, int]] = set()

    def tensor(t: Tensor, path: str) -> dict:
        if id(t) in names:
            return {"tensor": names[id(t)]}
        name, i = path or "tensor", 1
        while name in tensors or name == STRUCTURE_KEY:
            name, i = f"{path}#{i}", i + 1
        saved = t.detach().contiguous()
        where = (str(saved.device), saved.untyped_storage().data_ptr())
        if saved.numel() and where in storages:  # a view of a tensor saved already
            saved = saved.clone()
        storages.add((str(saved.device), saved.untyped_storage().data_ptr()))
        tensors[name], names[id(t)] = saved, name
        return {"tensor": name}

    def encode(x: Any, path: str) -> Any:
        if isinstance(x, Tensor):
            return tensor(x, path)
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        at = f"{path}." if path else ""
        if isinstance(x, dict):
            bad = [k for k in x if not isinstance(k, str)]
            if bad:
                raise TypeError(f"state_to_dict: key {bad[0]!r} at {path or 'the top'!r} is not "
                                "a string")
            return {"dict": {k: encode(v, at + k) for k, v in x.items()}}
        if isinstance(x, (list, tuple)):
            kind = "list" if isinstance(x, list) else "tuple"
            return {kind: [encode(v, f"{at}{i}") for i, v in enumerate(x)]}
        cls = _STATE_CLASSES.get(type(x).__name__)
        if cls is type(x):
            return {"state": cls.__name__, "fields": encode(x.state_dict(), path)}
        raise TypeError(f"state_to_dict: cannot save a {type(x).__name__} at {path or 'the top'!r}"
                        " (tensors, numbers, None, str, dicts, lists, tuples and registered "
                        "state classes only)")

    layout = json.dumps({"version": 1, "state": encode(state, "")})
    tensors[STRUCTURE_KEY] = torch.frombuffer(bytearray(layout.encode()), dtype=torch.uint8)
    return tensors


def state_from_dict(d: dict[str, Tensor], *, device: Any = None) -> Any:
    """The state :func:`state_to_dict` saved as ``d`` (tensors moved to ``device`` if given)."""
    if STRUCTURE_KEY not in d:
        raise ValueError(f"state_from_dict: no {STRUCTURE_KEY!r} entry; not a dict made by "
                         "nlframe.layers.state_to_dict")
    layout = json.loads(d[STRUCTURE_KEY].cpu().numpy().tobytes().decode())
    if layout.get("version") != 1:
        raise ValueError(f"state_from_dict: unknown layout version {layout.get('version')!r}")
    get_registry()  # load the plugins: their state classes register on import
    loaded: dict[str, Tensor] = {}

    def decode(x: Any) -> Any:
        if not isinstance(x, dict):
            return x
        if "tensor" in x:
            name = x["tensor"]
            if name not in d:
                raise ValueError(f"state_from_dict: tensor {name!r} is missing")
            if name not in loaded:
                loaded[name] = d[name] if device is None else d[name].to(device)
            return loaded[name]
        if "dict" in x:
            return {k: decode(v) for k, v in x["dict"].items()}
        if "list" in x:
            return [decode(v) for v in x["list"]]
        if "tuple" in x:
            return tuple(decode(v) for v in x["tuple"])
        cls = _STATE_CLASSES.get(x.get("state"))
        if cls is None:
            raise ValueError(f"state_from_dict: unknown state class {x.get('state')!r}; known: "
                             f"{sorted(_STATE_CLASSES)}")
        return cls.from_state_dict(decode(x["fields"]))

    return decode(layout["state"])
