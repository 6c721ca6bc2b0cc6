"""Hypothesis strategies for nlframe plugins: scan inputs, gates, parameters, specs.

Tensor values come from a ``torch.Generator`` seeded by a drawn integer, so
examples are cheap, reproducible and generic (no accidental ties or kinks);
hypothesis explores the *shapes*, the seeds and the hyperparameter values.
Every strategy takes a ``dtype`` (float64 is what the conformance suites use).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import attrs
import torch
from hypothesis import strategies as st
from torch import Tensor

from ..interfaces import Params
from ..registry import get_registry

__all__ = ["ScanInputs", "seeds", "tensors", "scan_inputs", "hyper_schedules", "param_dicts",
           "gradients", "configs", "specs", "memory_dims"]

seeds = st.integers(min_value=0, max_value=2**31 - 1)
"""Seeds for the generators that fill drawn tensors."""


@st.composite
def tensors(draw, shape: Sequence[int], *, dtype: torch.dtype = torch.float64,
            low: float | None = None, high: float | None = None, scale: float = 1.0) -> Tensor:
    """A tensor of ``shape``: uniform in ``[low, high]`` when both are given, else
    ``scale · N(0, 1)``."""
    gen = torch.Generator().manual_seed(draw(seeds))
    if low is not None and high is not None:
        return low + (high - low) * torch.rand(tuple(shape), generator=gen, dtype=dtype)
    return scale * torch.randn(tuple(shape), generator=gen, dtype=dtype)


@attrs.frozen
class ScanInputs:
    """One drawn ``memory_scan`` call: ``q, k (B, H, T, Dk)``, ``v (B, H, T, Dv)``,
    gates ``lr`` θ, ``decay`` α, ``momentum`` η (floats or ``(B, H, T)``) and ``chunk_size``."""

    q: Tensor
    k: Tensor
    v: Tensor
    gates: dict
    chunk_size: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.q.shape[:3])

    def kwargs(self) -> dict[str, Any]:
        """``q, k, v``, the gates and ``chunk_size`` as ``memory_scan`` keyword arguments."""
        return {"q": self.q, "k": self.k, "v": self.v, "chunk_size": self.chunk_size, **self.gates}


def memory_dims(memory: str | type, dim_k: int, dim_v: int) -> tuple[int, int]:
    """``(Dk, Dv)`` a memory accepts: residual memories (``x + f(x)``) need ``Dk == Dv``;
    a memory whose constructor rejects ``Dk != Dv`` gets ``Dv = Dk`` too."""
    cls = get_registry().get("memory", memory) if isinstance(memory, str) else memory
    if getattr(cls, "structure", None) == "residual-mlp":
        return dim_k, dim_k
    try:
        cls(dim_k, dim_v)
    except (ValueError, TypeError):
        return dim_k, dim_k
    return dim_k, dim_v


def _accepted_gates(optimizer: str | type | None) -> tuple[str, ...]:
    if optimizer is None:
        return ("lr", "decay", "momentum")
    cls = get_registry().get("optimizer", optimizer) if isinstance(optimizer, str) else optimizer
    return tuple(g for g in ("lr", "decay", "momentum") if g in cls.hyperparams)


@st.composite
def hyper_schedules(draw, shape: Sequence[int] | None = None, *,
                    dtype: torch.dtype = torch.float64, optimizer: str | type | None = None,
                    max_lr: float = 0.5, max_decay: float = 0.3,
                    max_momentum: float = 0.9) -> dict[str, Any]:
    """Scan gates ``{"lr": θ, "decay": α, "momentum": η}``, each a float or a per-token
    ``(B, H, T)`` tensor with ``θ ∈ [0, max_lr]``, ``α ∈ [0, max_decay]``,
    ``η ∈ [0, max_momentum]`` (the scan contract, docs/concepts.md).

    ``shape`` is ``(B, H, T)``; without it all gates are floats. With
    ``optimizer`` only the gates that rule accepts are drawn (the others are
    left out, i.e. at ``memory_scan``'s defaults).
    """
    highs = {"lr": max_lr, "decay": max_decay, "momentum": max_momentum}
    out: dict[str, Any] = {}
    for name in _accepted_gates(optimizer):
        high = highs[name]
        per_token = shape is not None and draw(st.booleans())
        if per_token:
            out[name] = draw(tensors(tuple(shape), dtype=dtype, low=0.0, high=high))
        else:
            out[name] = draw(st.floats(0.0, high, allow_nan=False, allow_infinity=False))
    return out


@st.composite
def scan_inputs(draw, memory: str | type = "linear", objective: str | None = None, *,
                optimizer: str | type | None = "momentum", max_B: int = 2, max_H: int = 2,
                max_T: int = 8, max_D: int = 4, chunk_sizes: Sequence[int] | None = None,
                dtype: torch.dtype = torch.float64) -> ScanInputs:
    """A ``memory_scan`` call whose shapes fit ``memory`` (``Dk == Dv`` where it needs it).

    Keys and queries are unit-norm (as models normalise them), values
    ``N(0, 1)``; gates come from :func:`hyper_schedules` for ``optimizer``;
    ``chunk_size`` is drawn from ``chunk_sizes`` (default ``1..T+1``, so chunks
    longer than the sequence occur). ``objective`` is accepted for symmetry
    with the suites; every registered objective takes any ``Dv``.
    """
    if objective is not None:
        get_registry().get("objective", objective)  # unknown names fail early and clearly
    B = draw(st.integers(1, max_B))
    H = draw(st.integers(1, max_H))
    T = draw(st.integers(1, max_T))
    Dk, Dv = memory_dims(memory, draw(st.integers(1, max_D)), draw(st.integers(1, max_D)))
    q = torch.nn.functional.normalize(draw(tensors((B, H, T, Dk), dtype=dtype)), dim=-1)
    k = torch.nn.functional.normalize(draw(tensors((B, H, T, Dk), dtype=dtype)), dim=-1)
    v = draw(tensors((B, H, T, Dv), dtype=dtype))
    gates = draw(hyper_schedules((B, H, T), dtype=dtype, optimizer=optimizer))
    chunk = draw(st.sampled_from(list(chunk_sizes)) if chunk_sizes else st.integers(1, T + 1))
    return ScanInputs(q=q, k=k, v=v, gates=gates, chunk_size=chunk)


@st.composite
def param_dicts(draw, shapes: Mapping[str, Sequence[int]] | None = None, *,
                batch_dims: Sequence[int] | int | None = None, dtype: torch.dtype = torch.float64,
                bound: float | None = None) -> Params:
    """Parameters ``{name: (*batch_dims, *shape)}``.

    ``shapes`` maps names to per-element shapes (default: one or two drawn
    matrices of side 1..4, as memories have). ``batch_dims`` is a tuple of
    leading sizes, an int (that many leading dims of drawn size 1..3) or
    ``None`` (no leading dims). Values are ``N(0, 1)``, or uniform in
    ``[-bound, bound]`` when ``bound`` is given.
    """
    if shapes is None:
        n = draw(st.integers(1, 2))
        shapes = {f"W{i}": (draw(st.integers(1, 4)), draw(st.integers(1, 4))) for i in range(n)}
    if isinstance(batch_dims, int):
        batch_dims = tuple(draw(st.integers(1, 3)) for _ in range(batch_dims))
    lead = tuple(batch_dims or ())
    kw = {"low": -bound, "high": bound} if bound is not None else {}
    return {name: draw(tensors((*lead, *shape), dtype=dtype, **kw)) for name, shape in shapes.items()}


def gradients(params: Params, *, bound: float | None = None, scale: float = 1.0):
    """Gradients for ``params``: same names, shapes, dtypes; ``scale · N(0, 1)`` or
    uniform in ``[-bound, bound]``."""
    kw = {"low": -bound, "high": bound} if bound is not None else {"scale": scale}
    return st.fixed_dictionaries({
        n: tensors(tuple(p.shape), dtype=p.dtype, **kw) for n, p in params.items()})


def configs(cls: type, **overrides: Any):
    """Valid instances of a frozen attrs ``Config`` class (a block's spec table).

    Fields are drawn from their types (hypothesis' attrs support reads
    ``instance_of``/``in_`` validators); ``overrides`` fixes fields (values or
    strategies). Draws the class' validators reject are discarded, so every
    example is a config the class itself accepts.
    """
    fields = {k: (v if isinstance(v, st.SearchStrategy) else st.just(v))
              for k, v in overrides.items()}
    return st.builds(_valid_or_none(cls), **fields).filter(lambda c: c is not None)


def _valid_or_none(cls: type):  # noqa: D401
    def make(**kw: Any):
        try:
            return cls(**kw)
        except (ValueError, TypeError):
            return None

    make.__signature__ = __import__("inspect").signature(cls)  # type: ignore[attr-defined]
    return make


def specs(*, blocks: Sequence[str] | None = None, max_blocks: int = 3, model: str = "lm"):
    """Random valid model specs, as the dict a TOML spec file holds.

    ``{"model": {"type": model, "dim": …, <model Config fields>, "blocks": [{"type":
    name, <Config fields>}, …]}}``: each field of a block's attrs ``Config`` is left
    at its default or drawn from its validators (``positive_int``, ``in_range``,
    ``one_of``, ``plugin_name``, plugin references → registered names, nested
    ``BlockSpec``s one level deep). Only dicts that ``nlframe.spec.load_spec``
    accepts are produced (cross-field checks such as heads dividing ``dim``
    included); ``blocks`` restricts the block types drawn.
    """
    from .. import spec as spec_mod

    reg = get_registry()
    inner = [n for n in (blocks if blocks is not None else reg.names("block"))
             if not _has_field(reg.get("block", n).Config, "dim")]
    if not inner:
        raise ValueError("specs(): no registered block can sit inside a model")
    tables = st.lists(st.sampled_from(inner).flatmap(lambda n: _block_table(spec_mod, n, 1)),
                      min_size=1, max_size=max_blocks)
    model_table = _block_table(spec_mod, model, 0, blocks=tables)

    def valid(d: dict) -> bool:
        try:
            spec_mod.load_spec(d)
        except (spec_mod.SpecError, ValueError, TypeError):
            return False
        return True

    return st.fixed_dictionaries({"model": model_table}).filter(valid)


def _has_field(cls: type, name: str) -> bool:
    return attrs.has(cls) and any(f.name == name for f in attrs.fields(cls))


def _validators(v: Any) -> list:
    """Flatten ``and_``/``optional`` validators: ``[(validator, optional), ...]``."""
    inner = getattr(v, "_validators", None) or getattr(v, "validators", None)
    if isinstance(inner, (list, tuple)):
        return [x for w in inner for x in _validators(w)]
    if type(v).__name__ == "_OptionalValidator":
        return [(w, True) for w, _ in _validators(v.validator)]
    return [(v, False)] if v is not None else []


def _field_strategy(spec_mod: Any, field: Any, depth: int, blocks: Any):
    """A strategy for one Config field's value, or ``None`` when only the default fits."""
    typ = field.type
    if field.name == "dim":
        return st.sampled_from([8, 16, 32])
    if field.name == "blocks" and blocks is not None:
        return blocks
    for v, _optional in _validators(field.validator):
        base = None
        if isinstance(v, type(spec_mod.positive_int)):
            base = st.sampled_from([1, 2, 4, 8])
        elif isinstance(v, type(spec_mod.non_negative)):
            base = st.floats(0.0, 1.0)
        elif isinstance(v, spec_mod.InRange):
            base = st.floats(v.lo, min(v.hi, v.lo + 1e3), exclude_min=v.lo_open,
                             exclude_max=v.hi_open)
        elif isinstance(v, spec_mod.OneOf):
            base = st.sampled_from(list(v.choices))
        elif isinstance(v, spec_mod.PluginName):
            base = st.sampled_from([*get_registry().names(v.kind), *v.extra])
        if base is not None:
            return base  # optional fields: None is only reachable as their default (TOML has no null)
    if isinstance(typ, type) and issubclass(typ, spec_mod.PluginRef):
        return st.sampled_from(get_registry().names(typ.kind))
    if typ is bool:
        return st.booleans()
    return None


def _block_table(spec_mod: Any, name: str, depth: int, blocks: Any = None):
    """``{"type": name, **drawn fields}`` for block ``name``'s ``Config``."""
    cls = get_registry().get("block", name).Config
    try:
        attrs.resolve_types(cls)
    except Exception:  # noqa: BLE001 - unresolved annotations: fall back to validators only
        pass
    fields = {}
    for f in attrs.fields(cls):
        strat = _field_strategy(spec_mod, f, depth, blocks)
        required = f.default is attrs.NOTHING
        if strat is None:
            if required:
                raise ValueError(f"specs(): cannot draw required field {name}.{f.name}")
            continue
        always = required or (f.name == "blocks" and blocks is not None)
        fields[f.name] = strat if always else st.one_of(st.just(_DEFAULT), strat)
    return st.fixed_dictionaries(fields).map(
        lambda d: {"type": name, **{k: v for k, v in d.items() if v is not _DEFAULT}})


_DEFAULT = object()
