"""Build modules from validated specs: ``build(spec) -> nn.Module``; count and size
them without allocating: :func:`count_parameters`, :func:`estimate_training_memory`."""

from __future__ import annotations

import contextlib
import inspect
import math
import os
from typing import Any

import attrs
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .spec import BlockSpec, Spec, load_spec
from .spec.convert import child_blocks

__all__ = ["build", "build_block", "build_blocks", "count_parameters",
           "estimate_training_memory", "machine_memory", "too_large"]


def build_block(block: BlockSpec, dim: int) -> nn.Module:
    """One module ``cls(config, dim)`` of the registered block ``block.type``."""
    return block.cls(block.config, dim)


def build_blocks(blocks: Any, dim: int) -> list[tuple[str, nn.Module]]:
    """``(type, module)`` for every block of a stack, ``repeat`` expanded into
    independent copies (each with its own parameters)."""
    return [(b.type, build_block(b, dim)) for b in blocks for _ in range(b.repeat)]


def build(spec: Any, *, seed: int | None = None, device: Any = None,
          dtype: torch.dtype | None = None) -> nn.Module:
    """The model of ``spec`` (a :class:`Spec`, a path, TOML text or a dict).

    ``seed`` makes the initial parameters reproducible without touching the
    global RNG; ``device``/``dtype`` move the built model.
    """
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with rng:
        if seed is not None:
            torch.manual_seed(seed)
        model = build_block(spec.model, spec.model.config.dim)
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model


# ------------------------------------------------------------- counting on "meta"
def _factories() -> set:
    try:
        from torch.utils._device import _device_constructors
    except ImportError:  # pragma: no cover - a torch without it: only the common ones
        names = ("empty", "zeros", "ones", "full", "rand", "randn", "randint", "arange", "eye")
        return {getattr(torch, n) for n in names}
    data = {torch.tensor, torch.as_tensor, torch.asarray, torch.scalar_tensor}
    return {f for f in _device_constructors() if f not in data}


_RANDOM_FILLS = {"normal_", "uniform_", "bernoulli_", "exponential_", "random_", "cauchy_",
                 "log_normal_", "geometric_"}


class _OnMeta(TorchFunctionMode):
    """Tensor factories without a ``device`` allocate on ``meta`` (no memory).

    ``torch.tensor(data)`` stays on the CPU (its data exists already, and blocks
    turn such scalars into floats); random fills of meta tensors are skipped
    (nothing to fill, and torch's meta kernels for them import torch._dynamo,
    which takes seconds).
    """

    factories: set | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if _OnMeta.factories is None:
            _OnMeta.factories = _factories()
        if func in _OnMeta.factories and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        elif getattr(func, "__name__", "") in _RANDOM_FILLS:
            target = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


def _numel(block: BlockSpec, dim: int) -> int:
    """Parameters of one module of ``block``: built on ``meta``, or on the CPU for
    a block that cannot be built there (callers pass ``repeat``-free trees)."""
    try:
        with _OnMeta():
            module = build_block(block, dim)
    except Exception:  # noqa: BLE001 - e.g. a block reading a value out of a tensor
        module = build_block(block, dim)
    return sum(p.numel() for p in module.parameters())


def _evolve_children(block: BlockSpec, change: Any) -> BlockSpec:
    """``block`` with every direct child ``c`` (at field, index) replaced by ``change(field, index, c)``."""
    config, changes = block.config, {}
    for name, index, child in child_blocks(config):
        new = change(name, index, child)
        if index is None:
            changes[name] = new
        else:
            old = changes.get(name, getattr(config, name))
            changes[name] = type(old)((*old[:index], new, *old[index + 1:]))
    return attrs.evolve(block, config=attrs.evolve(config, **changes)) if changes else block


def _minimal(block: BlockSpec) -> BlockSpec:
    """``block`` with ``repeat = 1`` in its whole tree."""
    return attrs.evolve(_evolve_children(block, lambda _n, _i, c: _minimal(c)), repeat=1)


def _expands(block: BlockSpec) -> bool:
    return block.repeat > 1 or any(_expands(c) for _, _, c in child_blocks(block.config))


def _count(block: BlockSpec, dim: int) -> tuple[int, int]:
    """``(parameters of one copy of block, of its minimal form)``, building only
    minimal trees.

    A child repeated ``r`` times adds ``r`` copies of itself plus ``r`` times what
    its container spends per copy (e.g. the LM's norm per block): with ``m`` the
    container's minimal count, ``delta`` the increase when that child is built
    twice, and ``U``, ``Um`` the child's exact and minimal counts, the container has
    ``m + (r - 1)·delta + r·(U - Um)`` parameters (copies share nothing).
    """
    base = _minimal(block)
    minimal = _numel(base, dim)
    exact = minimal
    for name, index, child in child_blocks(block.config):
        if not _expands(child):
            continue
        u, um = _count(child, dim)
        if child.repeat > 1:
            twice = _evolve_children(base, lambda n, i, c, at=(name, index): attrs.evolve(
                c, repeat=2) if (n, i) == at else c)
            exact += (child.repeat - 1) * (_numel(twice, dim) - minimal)
        exact += child.repeat * (u - um)
    return exact, minimal


def count_parameters(spec: Any) -> int:
    """Number of distinct parameters of the model of ``spec`` (tied weights once).

    Allocates nothing: the model is built on the ``meta`` device, and a block
    with ``repeat = N`` is built once or twice and multiplied (recursively for
    nested blocks), never N times.
    """
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    return _count(spec.model, spec.model.config.dim)[0]


# ------------------------------------------------------------------ memory estimate
ACTIVATION_FLOATS_PER_BLOCK = 16
"""Values per token and unit of ``dim`` one block keeps for the backward pass."""


def _blocks(block: BlockSpec) -> int:
    """Block instances below ``block``, ``repeat`` and nesting expanded."""
    return sum(c.repeat * (1 + _blocks(c)) for _, _, c in child_blocks(block.config))


def _state_slots(name: str, options: dict) -> float:
    """Optimizer state values per parameter of rule ``name``, from its ``init`` on
    a meta 64×64 matrix (2, as Adam, when that does not work)."""
    from .registry import get_registry

    try:
        rule = get_registry().get("optimizer", name)(**options)
        params = {"w": torch.empty(64, 64, device="meta")}
        takes_hyper = any(p.kind is p.VAR_KEYWORD
                          for p in inspect.signature(rule.init).parameters.values())
        state = rule.init(params, **rule.defaults) if takes_hyper else rule.init(params)
    except Exception:  # noqa: BLE001 - a rule that cannot init on meta
        return 2.0
    leaves, stack = 0, [state]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            leaves += item.numel()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return leaves / 4096


def estimate_training_memory(spec: Any) -> dict[str, int]:
    """Rough bytes to train ``spec`` in one process at its ``[train]`` batch_size × seq_len.

    * ``parameter_bytes``, ``gradient_bytes``: 4 per parameter each (fp32 weights
      whatever the ``precision``);
    * ``optimizer_bytes``: 4·s per parameter, ``s`` the larger number of state
      values per parameter of ``optimizer`` and ``fallback_optimizer`` (adamw 2);
    * ``activation_bytes``: ``b·T·(n·16·dim·a + 8·V)`` for a micro-batch of
      ``b = batch_size`` sequences of ``T`` tokens (``grad_accum`` adds nothing),
      ``n`` blocks (``repeat`` and nesting expanded), ``a`` = 4 bytes per value
      (2 under bf16/fp16), 16·dim the values a pre-norm transformer block keeps
      per token (norm, q/k/v/out, a 4·dim hidden layer and its activation) and
      8·V the fp32 logits and their gradient. Under the LM's chunk-group
      checkpointing (``checkpoint_tokens = g < T``) a block keeps 2·dim per
      token, plus ``b·g·16·dim·a`` for the group being recomputed.

    Blocks whose memories keep per-chunk states for the backward pass need more
    (measured at 16x512: deltanet-tiny 2x, titans-tiny 3x, hope-tiny 18x the
    estimate; transformer-tiny within 5 %): an order of magnitude and a floor,
    not a budget. Also ``total_bytes``,
    ``parameters``, ``blocks``, ``batch_size``, ``seq_len``. Builds nothing
    (see :func:`count_parameters`).
    """
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    train, config = spec.train, spec.model.config
    n_params = count_parameters(spec)
    slots = max(_state_slots(train.optimizer, dict(train.optimizer_kwargs)),
                _state_slots(train.fallback_optimizer, {}))
    dim, vocab = config.dim, getattr(config, "vocab_size", 0)
    a = 2 if train.precision in ("bf16", "fp16") else 4
    b, T = train.batch_size, train.seq_len
    n = _blocks(spec.model)
    group = getattr(config, "checkpoint_tokens", 0) or 0
    k = ACTIVATION_FLOATS_PER_BLOCK
    if group and group < T:
        activations = b * T * (n * 2 * dim * a + 8 * vocab) + (b * group * k * dim * a if n else 0)
    else:
        activations = b * T * (n * k * dim * a + 8 * vocab)
    out = {"parameters": n_params, "blocks": n, "batch_size": train.batch_size, "seq_len": T,
           "parameter_bytes": 4 * n_params, "gradient_bytes": 4 * n_params,
           "optimizer_bytes": math.ceil(4 * slots * n_params), "activation_bytes": activations}
    out["total_bytes"] = (out["parameter_bytes"] + out["gradient_bytes"] + out["optimizer_bytes"]
                          + activations)
    return out


def machine_memory(device: str = "cpu") -> tuple[int | None, str]:
    """``(bytes, what)`` of memory training on ``device`` can use: the GPU's total
    memory for an available ``cuda``/``cuda:N``, else the physical RAM
    (``None`` when the system does not say)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        index = int(device.partition(":")[2] or torch.cuda.current_device())
        if index < torch.cuda.device_count():
            return torch.cuda.get_device_properties(index).total_memory, f"cuda:{index}"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "RAM"
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
        return None, "RAM"


def gb_text(n: int) -> str:
    """Bytes as a short GB figure (``12``, ``3.4``, ``0.051``)."""
    x = n / 1e9
    return f"{x:,.0f}" if x >= 10 else f"{x:.1f}" if x >= 1 else f"{x:.2g}"


def too_large(spec: Any, estimate: dict[str, int] | None = None) -> str | None:
    """Why training ``spec`` cannot fit this machine (its
    :func:`estimate_training_memory` exceeds :func:`machine_memory`), or ``None``.
    The estimate is a lower bound, so this refuses only what surely does not fit."""
    est = estimate or estimate_training_memory(spec)
    limit, where = machine_memory(spec.train.device)
    if limit is None or est["total_bytes"] <= limit:
        return None
    return (f"too large to train here: ~{gb_text(est['total_bytes'])} GB at "
            f"{est['batch_size']}x{est['seq_len']} ({est['parameters']:,} parameters), "
            f"this machine has {gb_text(limit)} GB ({where})")
