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
    ``η ∈ [0, max_momentum]`` (the scan contract, DESIGN.md §2).

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


def _valid_or_none(cls: type):
    def make(**kw: Any):
        try:
            return cls(**kw)
        except (ValueError, TypeError):
            return None

    make.__signature__ = __import__("inspect").signature(cls)  # type: ignore[attr-defined]
    return make


def specs(*, blocks: Sequence[str] | None = None, max_blocks: int = 3):
    """Random valid model specs (dicts as a TOML spec file holds them).

    Delegates to ``nlframe.spec.spec_strategy`` when the spec module provides one;
    otherwise builds ``{"model": {..., "blocks": [{"type": name, **config}]}}``
    from the registered blocks' ``Config`` classes via :func:`configs`. Each
    drawn spec passes ``nlframe.spec.load_spec`` (checked by the kit's tests).
    """
    from importlib import import_module

    spec_mod = import_module("nlframe.spec")
    provided = getattr(spec_mod, "spec_strategy", None)
    if provided is not None:
        return provided(blocks=blocks, max_blocks=max_blocks)
    return _specs_from_configs(spec_mod, blocks, max_blocks)


def _specs_from_configs(spec_mod: Any, blocks: Sequence[str] | None, max_blocks: int):
    reg = get_registry()
    names = list(blocks) if blocks is not None else reg.names("block")
    if not names:
        raise ValueError("specs(): no block plugins are registered")

    def block_table(name: str):
        cls = reg.get("block", name)
        return configs(cls.Config).map(lambda c: {"type": name, **_unstructure(spec_mod, c)})

    block_list = st.lists(st.sampled_from(names).flatmap(block_table), min_size=1,
                          max_size=max_blocks)
    model = st.fixed_dictionaries({"blocks": block_list})
    return st.fixed_dictionaries({"model": model})


def _unstructure(spec_mod: Any, cfg: Any) -> dict:
    conv = getattr(spec_mod, "converter", None)
    if conv is not None:
        return conv.unstructure(cfg)
    return attrs.asdict(cfg)
