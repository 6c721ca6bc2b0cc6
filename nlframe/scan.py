"""``memory_scan``: validate, resolve plugins, dispatch to a backend.

The kernel holds no algorithm: memories, objectives, update rules and the
backends that execute the scan contract (docs/concepts.md) are all plugins.
"""

from __future__ import annotations

import functools
import os
from numbers import Real
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from .interfaces import Backend, Memory, ScanRequest
from .level import MemoryState, autocast_on, full_precision
from .registry import get_registry

__all__ = ["memory_scan", "run_scan", "make_request", "resolve_backend", "make_memory", "make_objective",
           "make_rule", "initial_state", "check_modes", "READ_MODES", "WRITE_MODES"]

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
    state = MemoryState.create(batched, rule, chunk_size=chunk_size)
    if getattr(rule, "structure", None) == "dgd":
        state.opt_state = {}  # DGD as a scan level keeps no rule state
    return state


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
        # 0-dim or 3-dim only (a (B, T) gate would silently broadcast as (H, T)), each
        # dim of size 1 or its own
        fits = value.dim() == 0 or (value.dim() == 3 and all(
            s in (1, n) for s, n in zip(value.shape, (B, H, T))))
        if not fits:
            raise ValueError(f"{name} must be a float or a tensor of shape (B, H, T) = "
                             f"{(B, H, T)} (size-1 dims broadcast); got shape "
                             f"{tuple(value.shape)}")
        return value.to(q.dtype).expand(B, H, T)
    if isinstance(value, Real) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=q.dtype, device=q.device).expand(B, H, T)
    raise TypeError(f"{name} must be a float or a (B, H, T) tensor, got {type(value).__name__}")


READ_MODES = ("after_write", "chunk_start")
WRITE_MODES = ("token", "chunk")


def _split_hyper(rule, scan_values: Mapping[str, Any], extra: Mapping[str, Any], q: Tensor,
                 rule_name: str, structure: str | None = None):
    """Per-token ``(B, H, T)`` gates and static hyperparameters of one scan.

    For a ``"dgd"`` rule the scan itself supplies ``x⁽ˡ⁾`` and the retention: ``lr`` (θ)
    and ``decay`` (α) are the level's gates and ``momentum`` must stay 0 (DGD has none).
    """
    if structure == "dgd":
        if not (isinstance(scan_values["momentum"], Real)
                and float(scan_values["momentum"]) == 0.0):
            raise ValueError(f"optimizer {rule_name!r} has no momentum (DGD, NL eq. 88); leave "
                             "momentum at 0")
        if extra:
            raise ValueError(f"optimizer_kwargs: optimizer {rule_name!r} takes only the scan's "
                             f"lr and decay as a level; got {sorted(extra)}")
        per_token = {n: _as_gate(n, scan_values[n], q) for n in ("lr", "decay")}
        for n, lo, hi in (("lr", 0.0, None), ("decay", 0.0, 1.0)):
            v = scan_values[n]
            if isinstance(v, Real) and (v < lo or (hi is not None and v > hi)):
                raise ValueError(f"optimizer {rule_name!r}: {n} must be in "
                                 f"[{lo}, {hi if hi is not None else 'inf'}), got {v}")
        return per_token, {}
    accepted = set(rule.hyperparams)
    per_token: dict[str, Tensor] = {}
    static: dict[str, Any] = {}
    for name, value in scan_values.items():
        default = isinstance(value, Real) and float(value) == _SCAN_HYPER[name]
        # decay / momentum left at the scan's default keep the rule's own default
        if name in accepted and not (default and (name in extra or name != "lr")):
            per_token[name] = _as_gate(name, value, q)
        elif not default:
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
            why = backend.unavailable_reason() or "is_available() returned False"
            raise RuntimeError(f"backend {name!r} is not available on this machine: {why}")
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
            reasons.append(f"{bname}: not available ({backend.unavailable_reason() or 'no reason given'})")
            continue
        reason = backend.supports(request)
        if reason is None:
            return bname, backend
        reasons.append(f"{bname}: {reason}")
    raise ValueError(f"no backend supports this scan ({_describe(request)}): " + "; ".join(reasons))


def _describe(r: ScanRequest) -> str:
    return (f"memory={r.names.get('memory')!r}, objective={r.names.get('objective')!r}, "
            f"optimizer={r.names.get('optimizer')!r}, chunk_size={r.chunk_size}, read={r.read!r}, "
            f"write={r.write!r}, self_target={r.self_target}")


def _state_precision(scan: Callable[..., tuple[Tensor, MemoryState]]):
    """Under ``torch.autocast`` run ``scan`` in the fast state's precision: autocast off on
    q's device, and q, k, v, the gates, tensor rule options and the state upcast to the
    state's dtype (at least float32; docs/concepts.md, Mixed precision). ``y`` and the
    returned state are in that dtype. Without autocast the call is unchanged."""
    @functools.wraps(scan)
    def wrapper(q: Tensor, k: Tensor, v: Tensor, **kwargs: Any) -> tuple[Tensor, MemoryState]:
        if not (isinstance(q, Tensor) and autocast_on(q)):
            return scan(q, k, v, **kwargs)
        state, dtype = kwargs.get("state"), torch.float32
        if isinstance(state, MemoryState) and state.params:
            dtype = torch.promote_types(next(iter(state.params.values())).dtype, dtype)
        return full_precision(scan, q, k, v, dtype=dtype, device_type=q.device.type, **kwargs)
    return wrapper


@_state_precision
def memory_scan(q: Tensor, k: Tensor, v: Tensor, *, memory: str = "linear", objective: str = "l2",
                optimizer: str = "momentum", lr: Any = 0.1, decay: Any = 0.0, momentum: Any = 0.0,
                chunk_size: int = 1, backend: str = "auto", state: MemoryState | None = None,
                read: str = "after_write", write: str = "token", self_target: bool = False,
                memory_kwargs: Mapping[str, Any] | None = None,
                objective_kwargs: Mapping[str, Any] | None = None,
                optimizer_kwargs: Mapping[str, Any] | None = None,
                grad_clip: float | None = None, check_finite: bool = True,
                name: str | None = None, truncate: bool = False) -> tuple[Tensor, MemoryState]:
    """Write to and read from an associative memory (docs/concepts.md).

    Per (batch, head), chunk ``c`` covers tokens ``cC+1..(c+1)C`` with chunk-start
    parameters ``W_c`` and::

        target_t = M_{W_c}(v_t) if self_target else v_t       (self-generated values, NL eq. 87)
        g_t = ∇_W ℓ(M_W(k_t), target_t) at W = W_c             (target constant for the inner grad)
        write="token": every token, in order —
            momentum: S = η_t S − θ_t g_t;  W = (1 − α_t) W + S          (Titans eqs. 10, 13)
            dgd:      W⁽ˡ⁾ = W⁽ˡ⁾((1 − α_t) I − θ_t x⁽ˡ⁾_t x⁽ˡ⁾_tᵀ) − θ_t g⁽ˡ⁾_t   (NL eqs. 88, 93)
            other rules: their ``update(g_t, state, W, lr=θ_t, …)``
        write="chunk": once, at the chunk's last token, on G_c = Σ_t θ_t g_t, with α, η of
            that token (NL eq. 71) — momentum: S = ηS − G_c, W = (1 − α)W + S; dgd:
            W⁽ˡ⁾ = W⁽ˡ⁾((1 − α)I − Σ_t θ_t x⁽ˡ⁾_t x⁽ˡ⁾_tᵀ) − G⁽ˡ⁾_c; other rules: one
            ``update(G_c, state, W)`` with ``lr = 1`` (θ already weights G_c)
        read="after_write": y_t = M_W(q_t) after token t's write
        read="chunk_start": y_t = M_{W_c}(q_t)                              (NL eq. 90)

    ``x⁽ˡ⁾_t`` is the input of weight matrix ``l`` when the memory reads ``k_t`` at ``W_c``
    (:meth:`~nlframe.interfaces.Memory.layer_inputs`).

    Args:
        q, k: ``(B, H, T, Dk)``; v: ``(B, H, T, Dv)``.
        lr, decay, momentum: θ, α, η — floats or ``(B, H, T)`` tensors.
        chunk_size: ``C``, the level's update frequency (1: fully recurrent).
        backend: a registered backend name or ``"auto"``.
        state: the :class:`MemoryState` returned by a previous call (``None``:
            the memory's initial parameters and a fresh rule state).
        read, write, self_target: the level's read and write modes (above).
        optimizer_kwargs: further hyperparameters of the update rule.
        grad_clip: clip each token's ``∂ℓ/∂pred_t`` to this norm before it enters the
            write (inner-level stability, docs/concepts.md; ``None``: the exact contract).
        check_finite: raise ``FloatingPointError`` naming the level, the first token and
            stream position whose read (or the final state) is not finite.
        name: the level's name, for messages (e.g. ``"blocks[2].titans.memory"``).
        truncate: stop the outer gradient at every chunk's write (but the stream's
            first): a chunk's write starts from its detached start state, its reads keep
            the attached one (a block's ``inner_grad = "truncated"``; needs
            ``read="chunk_start"``). Values are unchanged.

    Returns:
        ``y (B, H, T, Dv)`` and the :class:`MemoryState` after the last token (its
        ``surprise`` holds the call's mean write-time ``‖∂ℓ/∂pred_t‖`` per (B, H)).
    """
    _check_qkv(q, k, v)
    mem = make_memory(memory, q.shape[-1], v.shape[-1], **dict(memory_kwargs or {}))
    obj = make_objective(objective, **dict(objective_kwargs or {}))
    rule = make_rule(optimizer)
    names = {"memory": memory, "objective": objective, "optimizer": optimizer}
    return run_scan(q, k, v, memory=mem, objective=obj, rule=rule, names=names, lr=lr,
                    decay=decay, momentum=momentum, chunk_size=chunk_size, backend=backend,
                    state=state, read=read, write=write, self_target=self_target,
                    optimizer_kwargs=optimizer_kwargs, grad_clip=grad_clip,
                    check_finite=check_finite, name=name, truncate=truncate)


def check_modes(read: Any, write: Any, self_target: Any, grad_clip: Any = None) -> None:
    """Raise ``ValueError`` naming the argument whose value is not one the contract knows."""
    if read not in READ_MODES:
        raise ValueError(f"read must be one of {list(READ_MODES)}, got {read!r}")
    if write not in WRITE_MODES:
        raise ValueError(f"write must be one of {list(WRITE_MODES)}, got {write!r}")
    if not isinstance(self_target, bool):
        raise ValueError(f"self_target must be True or False, got {self_target!r}")
    if grad_clip is not None and (isinstance(grad_clip, bool) or not isinstance(grad_clip, Real)
                                  or not grad_clip > 0 or grad_clip == float("inf")):
        raise ValueError(f"grad_clip must be None or a finite number > 0, got {grad_clip!r}")


@_state_precision
def run_scan(q: Tensor, k: Tensor, v: Tensor, *, memory, objective, rule, names: Mapping[str, str],
             lr: Any = 0.1, decay: Any = 0.0, momentum: Any = 0.0, chunk_size: int = 1,
             backend: str = "auto", state: MemoryState | None = None, read: str = "after_write",
             write: str = "token", self_target: bool = False,
             optimizer_kwargs: Mapping[str, Any] | None = None, grad_clip: float | None = None,
             check_finite: bool = True, name: str | None = None,
             outputs: bool = True, truncate: bool = False,
             read_after: Tensor | None = None) -> tuple[Tensor, MemoryState]:
    """:func:`memory_scan` with plugin *instances* (resolved once, e.g. by a
    :class:`~nlframe.level.Level`); ``names`` are their registered names, for messages.
    ``outputs=False`` skips the reads (a write-only level step): ``y`` is then empty.
    ``truncate=True`` starts every chunk's write (but the stream's first) from its
    detached start state while its reads keep the attached one, so the outer gradient
    reaches a chunk's inputs only through the chunk it writes into (``inner_grad =
    "truncated"`` of the blocks; needs ``read="chunk_start"``; under ``torch.no_grad()``
    the full form runs, of the same values). ``read_after``: see
    :attr:`~nlframe.interfaces.ScanRequest.read_after`."""
    request = make_request(q, k, v, memory=memory, objective=objective, rule=rule, names=names,
                           lr=lr, decay=decay, momentum=momentum, chunk_size=chunk_size,
                           state=state, read=read, write=write, self_target=self_target,
                           optimizer_kwargs=optimizer_kwargs, grad_clip=grad_clip,
                           outputs=outputs, truncate=truncate, read_after=read_after)
    if request.truncate and not torch.is_grad_enabled():
        # the values of a truncated write are those of the full one; its detached starts
        # and zero-valued read corrections only shape a gradient that no_grad never forms
        request.truncate = False
    state = request.state
    if q.shape[2] == 0 or q.shape[0] == 0:
        return q.new_zeros(*q.shape[:2], q.shape[2] if outputs else 0, v.shape[-1]), state
    bname, impl = resolve_backend(backend, request)
    y, new_state = impl.scan(request)
    new_state.chunk_size = chunk_size
    if check_finite:
        _check_finite(y, new_state, state, request, bname, name)
    return y, new_state


def make_request(q: Tensor, k: Tensor, v: Tensor, *, memory, objective, rule,
                 names: Mapping[str, str], lr: Any = 0.1, decay: Any = 0.0, momentum: Any = 0.0,
                 chunk_size: int = 1, state: MemoryState | None = None,
                 read: str = "after_write", write: str = "token", self_target: bool = False,
                 optimizer_kwargs: Mapping[str, Any] | None = None,
                 grad_clip: float | None = None, outputs: bool = True,
                 truncate: bool = False, read_after: Tensor | None = None) -> ScanRequest:
    """The validated :class:`~nlframe.interfaces.ScanRequest` of a :func:`run_scan` call
    (``ValueError`` / ``TypeError`` naming the argument otherwise); no backend is chosen
    and nothing is computed. ``nlframe backends list`` probes backends with these (no
    ``read_after``)."""
    _check_qkv(q, k, v)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    check_modes(read, write, self_target, grad_clip)
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    if self_target and Dk != Dv:
        raise ValueError(f"self_target=True reads the values through the memory (M_W(v_t)), so "
                         f"v must have the key width: got Dk={Dk}, Dv={Dv}")
    if truncate and read != "chunk_start":
        raise ValueError("truncate=True needs read='chunk_start' (a chunk's reads then see its "
                         "start state, the only gradient path a truncated write keeps)")
    opt_name = names.get("optimizer", type(rule).__name__)
    if not getattr(rule, "batched", False):
        raise ValueError(f"optimizer {opt_name!r} does not declare batched functional use "
                         "(batched = True), so it cannot run as an inner level")
    if rule.structure == "dgd" and type(memory).layer_inputs is Memory.layer_inputs:
        raise ValueError(f"optimizer {opt_name!r} needs the input of every weight matrix, and "
                         f"memory {names.get('memory')!r} does not provide layer_inputs()")
    per_token, static = _split_hyper(rule, {"lr": lr, "decay": decay, "momentum": momentum},
                                     dict(optimizer_kwargs or {}), q, opt_name, rule.structure)
    if state is None:
        state = initial_state(memory, rule, batch=B, heads=H, chunk_size=chunk_size, dtype=q.dtype,
                              device=q.device)
        if rule.structure == "dgd":
            state.opt_state = {}
    else:
        _check_state(state, memory, q, chunk_size, None if rule.structure == "dgd" else rule)
    if write == "chunk" and state.position:
        _check_tree("state.pending", state.pending, state.params)
    structure = rule.scan_structure({**static, **{n: per_token[n] for n in per_token
                                                  if n not in ("lr", "decay")}})
    if structure == "momentum":
        # decay / momentum left at the scan's default keep the rule's own default: give it
        # to the backends as a gate, as they read α and η from ``hyper`` (0: left out)
        for n in ("decay", "momentum"):
            d = rule.defaults.get(n, 0.0)
            if (n not in per_token and n in rule.hyperparams and isinstance(d, Real)
                    and float(d) != 0.0):
                per_token[n] = torch.full_like(per_token["lr"], float(d))
    return ScanRequest(q=q, k=k, v=v, memory=memory, objective=objective, rule=rule,
                       hyper=per_token, static_hyper=static, chunk_size=chunk_size, state=state,
                       names=dict(names), read=read, write=write, self_target=self_target,
                       grad_clip=None if grad_clip is None else float(grad_clip),
                       rule_structure=structure, outputs=outputs, truncate=bool(truncate),
                       read_after=read_after)


def check_reads(y: Tensor, step: int, where: str, what: str) -> None:
    """``FloatingPointError`` naming the first token (and its stream position, the call
    starting at ``step``) whose read ``y (B, H, T, D)`` is not finite; nothing otherwise."""
    if not y.numel() or bool(torch.isfinite(y).all()):
        return
    bad = (~torch.isfinite(y)).flatten(3).any(-1)  # (B, H, T)
    first = int(bad.any(0).any(0).nonzero()[0])
    b = int(bad[:, :, first].any(1).nonzero()[0])
    raise FloatingPointError(
        f"{where}: non-finite read at token {first} of this call (stream position "
        f"{step + first}, batch element {b}; {what}); lower lr, set grad_clip, or check "
        "the inputs")


def _check_finite(y: Tensor, new: MemoryState, old: MemoryState, request: ScanRequest,
                  bname: str, name: str | None) -> None:
    """``FloatingPointError`` naming the level, token and stream position of the first
    non-finite read, or the parameter of a non-finite final state."""
    # one reduction on the fast path: a NaN or inf anywhere makes the sum non-finite
    # (an overflow of the sum alone falls through the exact checks below harmlessly)
    total = y.detach().sum() if y.numel() else y.new_zeros(())
    for p in new.params.values():
        total = total + p.detach().sum()
    if bool(torch.isfinite(total)):
        return
    where = f"level {name!r}" if name else "memory_scan"
    what = (f"memory={request.names.get('memory')!r}, optimizer="
            f"{request.names.get('optimizer')!r}, backend={bname!r}")
    check_reads(y, old.step, where, what)
    for pname, p in new.params.items():
        if not bool(torch.isfinite(p).all()):
            raise FloatingPointError(
                f"{where}: non-finite fast weights {pname!r} after stream position "
                f"{old.step + request.q.shape[2] - 1} ({what}); lower lr, set grad_clip, or "
                "check the inputs")
