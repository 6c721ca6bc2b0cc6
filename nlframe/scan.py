"""``memory_scan``: validate, resolve plugins, dispatch to a backend.

The kernel holds no algorithm: memories, objectives, update rules and the
backends that execute the scan contract (DESIGN.md §2) are all plugins.
"""

from __future__ import annotations

import os
from numbers import Real
from typing import Any, Mapping

import torch
from torch import Tensor

from .interfaces import Backend, ScanRequest
from .level import MemoryState
from .registry import get_registry

__all__ = ["memory_scan", "resolve_backend", "make_memory", "make_objective", "make_rule",
           "initial_state"]

# Scan arguments that map onto update-rule hyperparameters of the same name.
_SCAN_HYPER = {"lr": 0.1, "decay": 0.0, "momentum": 0.0}


def make_memory(name: str, dim_k: int, dim_v: int, **kwargs: Any):
    """Instantiate the memory plugin ``name`` for ``Dk → Dv``."""
    return get_registry().get("memory", name)(dim_k, dim_v, **kwargs)


def make_objective(name: str, **kwargs: Any):
    """Instantiate the objective plugin ``name``."""
    return get_registry().get("objective", name)(**kwargs)


def make_rule(name: str, **defaults: Any):
    """Instantiate the update-rule (optimizer) plugin ``name``."""
    return get_registry().get("optimizer", name)(**defaults)


def initial_state(memory, rule, *, batch: int, heads: int, params=None, chunk_size=None,
                  dtype=torch.float32, device=None, generator=None) -> MemoryState:
    """A fresh :class:`MemoryState` with ``W_0`` broadcast to ``(batch, heads, ...)``.

    ``params`` (name → tensor of the unbatched shape, or ``(heads, *shape)``)
    overrides the memory's own initialisation; autograd flows back to them, which
    is how a model learns its memories' initial states.
    """
    if params is None:
        params = memory.init_params(generator=generator, dtype=dtype, device=device)
    shapes = memory.param_shapes()
    batched = {}
    for name, shape in shapes.items():
        if name not in params:
            raise ValueError(f"initial params lack {name!r}; expected {sorted(shapes)}")
        p = params[name]
        if tuple(p.shape) == tuple(shape):
            p = p.expand(batch, heads, *shape)
        elif tuple(p.shape) == (heads, *shape):
            p = p.expand(batch, heads, *shape)
        elif tuple(p.shape) != (batch, heads, *shape):
            raise ValueError(f"initial param {name!r} has shape {tuple(p.shape)}; expected "
                             f"{tuple(shape)}, {(heads, *shape)} or {(batch, heads, *shape)}")
        batched[name] = p
    return MemoryState.create(batched, rule, chunk_size=chunk_size)


def _check_qkv(q: Any, k: Any, v: Any) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (B, H, T, D), got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got dtype {t.dtype}")
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape (B, H, T, Dk); got q {tuple(q.shape)}"
                         f" and k {tuple(k.shape)}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v must share (B, H, T) with k; got v {tuple(v.shape)} and k "
                         f"{tuple(k.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")


def _as_gate(name: str, value: Any, q: Tensor) -> Tensor:
    """A hyperparameter as a ``(B, H, T)`` tensor (floats broadcast without copying)."""
    B, H, T = q.shape[:3]
    if isinstance(value, Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got dtype {value.dtype}")
        if value.device != q.device:
            raise ValueError(f"{name} is on {value.device} but q is on {q.device}")
        try:
            shape = torch.broadcast_shapes(value.shape, (B, H, T))
        except RuntimeError:
            shape = None
        # 0-dim or 3-dim only: a (B, T) gate would silently broadcast as (H, T)
        if value.dim() not in (0, 3) or shape != torch.Size((B, H, T)):
            raise ValueError(f"{name} must be a float or a tensor of shape (B, H, T) = "
                             f"{(B, H, T)} (size-1 dims broadcast); got shape "
                             f"{tuple(value.shape)}")
        return value.to(q.dtype).expand(B, H, T)
    if isinstance(value, Real) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=q.dtype, device=q.device).expand(B, H, T)
    raise TypeError(f"{name} must be a float or a (B, H, T) tensor, got {type(value).__name__}")


def _split_hyper(rule, scan_values: Mapping[str, Any], extra: Mapping[str, Any], q: Tensor,
                 rule_name: str):
    accepted = set(rule.hyperparams)
    per_token: dict[str, Tensor] = {}
    static: dict[str, Any] = {}
    for name, value in scan_values.items():
        if name in accepted:
            per_token[name] = _as_gate(name, value, q)
        elif not (isinstance(value, Real) and float(value) == _SCAN_HYPER[name]):
            raise ValueError(f"optimizer {rule_name!r} has no hyperparameter {name!r} (accepted: "
                             f"{sorted(accepted)}); leave {name} at its default "
                             f"{_SCAN_HYPER[name]}")
    for name, value in extra.items():
        if name not in accepted:
            raise ValueError(f"optimizer_kwargs: optimizer {rule_name!r} has no hyperparameter "
                             f"{name!r}; accepted: {sorted(accepted)}")
        if name in per_token:
            raise ValueError(f"{name!r} given both as a scan argument and in optimizer_kwargs")
        if isinstance(value, Tensor) and value.dim() > 0:
            per_token[name] = _as_gate(f"optimizer_kwargs[{name!r}]", value, q)
        else:
            static[name] = value
    floats = {n: float(v) for n, v in {**scan_values, **extra}.items()
              if n in accepted and isinstance(v, Real) and not isinstance(v, bool)}
    try:
        rule.check_hyper({**rule.defaults, **static, **floats})
    except ValueError as exc:
        raise ValueError(f"optimizer {rule_name!r}: {exc}") from None
    return per_token, static


def _check_tree(path: str, got: Any, expected: Any) -> None:
    """``got`` has the nested dict structure and tensor shapes of ``expected``."""
    if isinstance(expected, dict):
        if not isinstance(got, dict) or set(got) != set(expected):
            keys = sorted(got) if isinstance(got, dict) else type(got).__name__
            raise ValueError(f"{path} has keys {keys}; expected {sorted(expected)}")
        for key in expected:
            _check_tree(f"{path}[{key!r}]", got[key], expected[key])
    elif isinstance(expected, Tensor):
        if not isinstance(got, Tensor) or got.shape != expected.shape:
            shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
            raise ValueError(f"{path} has shape {shape}; expected {tuple(expected.shape)}")


def _check_state(state: Any, memory, q: Tensor, chunk_size: int, rule=None) -> None:
    if not isinstance(state, MemoryState):
        raise TypeError(f"state must be a MemoryState or None, got {type(state).__name__}")
    B, H = q.shape[:2]
    for name, shape in memory.param_shapes().items():
        p = state.params.get(name)
        if p is None:
            raise ValueError(f"state.params lacks {name!r}; the memory expects {sorted(memory.param_shapes())}")
        if tuple(p.shape) != (B, H, *shape):
            raise ValueError(f"state.params[{name!r}] has shape {tuple(p.shape)}; expected "
                             f"{(B, H, *shape)} for q of shape {tuple(q.shape)}")
        if p.device != q.device:
            raise ValueError(f"state.params[{name!r}] is on {p.device} but q is on {q.device}")
        if p.dtype != q.dtype:
            raise TypeError(f"state.params[{name!r}] has dtype {p.dtype} but q has {q.dtype}; "
                            "convert the state with state.to(dtype)")
    if rule is not None:  # structure of a fresh rule state, computed on "meta" (no allocation)
        try:
            fresh = rule.init({n: torch.empty_like(p, device="meta") for n, p in state.params.items()})
        except Exception:  # noqa: BLE001 - a rule whose init cannot run on "meta"
            fresh = rule.init(state.params)
        _check_tree("state.opt_state", state.opt_state, fresh)
    if state.position:
        _check_tree("state.chunk_params", state.chunk_params, state.params)
    if state.position and state.chunk_size not in (None, chunk_size):
        raise ValueError(f"state is {state.position} tokens into a chunk of size "
                         f"{state.chunk_size}; cannot continue it with chunk_size={chunk_size}")


def resolve_backend(name: str, request: ScanRequest) -> tuple[str, Backend]:
    """The backend that will run ``request``: ``name`` itself (error if it cannot),
    or for ``"auto"`` the highest-priority available one that supports it
    (``NLFRAME_BACKEND`` overrides ``"auto"``)."""
    reg = get_registry()
    if name == "auto":
        name = os.environ.get("NLFRAME_BACKEND", "auto") or "auto"
    if name != "auto":
        backend = reg.get("backend", name)()
        if not backend.is_available():
            raise RuntimeError(f"backend {name!r} is not available on this machine")
        reason = backend.supports(request)
        if reason is not None:
            raise ValueError(f"backend {name!r} does not support this scan "
                             f"({_describe(request)}): {reason}")
        return name, backend
    reasons = []
    candidates = [(e.name, e.obj()) for e in reg.entries("backend")]
    candidates.sort(key=lambda nb: -nb[1].priority)
    for bname, backend in candidates:
        if not backend.is_available():
            reasons.append(f"{bname}: not available")
            continue
        reason = backend.supports(request)
        if reason is None:
            return bname, backend
        reasons.append(f"{bname}: {reason}")
    raise ValueError(f"no backend supports this scan ({_describe(request)}): " + "; ".join(reasons))


def _describe(r: ScanRequest) -> str:
    return (f"memory={r.names['memory']!r}, objective={r.names['objective']!r}, "
            f"optimizer={r.names['optimizer']!r}, chunk_size={r.chunk_size}")


def memory_scan(q: Tensor, k: Tensor, v: Tensor, *, memory: str = "linear", objective: str = "l2",
                optimizer: str = "momentum", lr: Any = 0.1, decay: Any = 0.0, momentum: Any = 0.0,
                chunk_size: int = 1, backend: str = "auto", state: MemoryState | None = None,
                memory_kwargs: Mapping[str, Any] | None = None,
                objective_kwargs: Mapping[str, Any] | None = None,
                optimizer_kwargs: Mapping[str, Any] | None = None,
                check_finite: bool = True) -> tuple[Tensor, MemoryState]:
    """Write to and read from an associative memory, token by token (DESIGN.md §2).

    Per (batch, head), chunk ``c`` covers tokens ``cC+1..(c+1)C`` and::

        g_t = ∇_W ℓ(W_{cC}; k_t, v_t)
        S_t = η_t S_{t-1} − θ_t g_t          (optimizer="momentum"; other rules: their update)
        W_t = (1 − α_t) W_{t-1} + S_t
        y_t = M_{W_t}(q_t)                    (read after write)

    Args:
        q, k: ``(B, H, T, Dk)``; v: ``(B, H, T, Dv)``.
        lr, decay, momentum: θ, α, η — floats or ``(B, H, T)`` tensors.
        chunk_size: ``C``, the level's update frequency (1: fully recurrent).
        backend: a registered backend name or ``"auto"``.
        state: the :class:`MemoryState` returned by a previous call (``None``:
            the memory's initial parameters and a fresh rule state).
        optimizer_kwargs: further hyperparameters of the update rule.
        check_finite: raise ``FloatingPointError`` naming the first token whose
            read is not finite, instead of returning NaN.

    Returns:
        ``y (B, H, T, Dv)`` and the :class:`MemoryState` after the last token.
    """
    _check_qkv(q, k, v)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    mem = make_memory(memory, Dk, Dv, **dict(memory_kwargs or {}))
    obj = make_objective(objective, **dict(objective_kwargs or {}))
    rule = make_rule(optimizer)
    if not getattr(rule, "batched", False):
        raise ValueError(f"optimizer {optimizer!r} does not declare batched functional use "
                         "(batched = True), so it cannot run as an inner level")
    per_token, static = _split_hyper(rule, {"lr": lr, "decay": decay, "momentum": momentum},
                                     dict(optimizer_kwargs or {}), q, optimizer)
    if state is None:
        state = initial_state(mem, rule, batch=B, heads=H, chunk_size=chunk_size, dtype=q.dtype,
                              device=q.device)
    else:
        _check_state(state, mem, q, chunk_size, rule)
    if T == 0 or B == 0:
        return q.new_zeros(B, H, T, Dv), state
    request = ScanRequest(q=q, k=k, v=v, memory=mem, objective=obj, rule=rule, hyper=per_token,
                          static_hyper=static, chunk_size=chunk_size, state=state,
                          names={"memory": memory, "objective": objective, "optimizer": optimizer})
    bname, impl = resolve_backend(backend, request)
    y, new_state = impl.scan(request)
    new_state.chunk_size = chunk_size
    if check_finite and not torch.isfinite(y).all():
        bad = (~torch.isfinite(y)).flatten(3).any(-1)  # (B, H, T)
        first = int(bad.any(0).any(0).nonzero()[0])
        raise FloatingPointError(
            f"memory_scan produced a non-finite read at token {first} of this call (stream "
            f"position {state.step + first}; memory={memory!r}, objective={objective!r}, "
            f"optimizer={optimizer!r}, backend={bname!r}); lower lr or clip the inputs")
    return y, new_state
