"""Assertions with relative-error reporting, for tensors, states and whole scans.

``assert_close`` accepts ``‖a − e‖_rms ≤ rtol·‖e‖_rms + atol`` (relative RMSE, as
flash-linear-attention's tests use) and reports the relative RMSE, the largest
absolute error and where it is, so a failure says how wrong, not only that.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

import torch
from torch import Tensor

from ..level import MemoryState
from ..scan import initial_state, make_memory, make_rule, memory_scan
from .contract import CONTRACT, SCAN_GATES, build_request, contract_scan

__all__ = ["rel_rmse", "assert_close", "assert_state_close", "assert_backend_matches_reference",
           "assert_streaming_consistent", "seeded_state"]


def rel_rmse(actual: Tensor, expected: Tensor) -> float:
    """``‖a − e‖₂ / ‖e‖₂`` (``‖a − e‖₂`` itself when ``e = 0``)."""
    a, e = actual.detach().double(), expected.detach().double()
    err = torch.linalg.vector_norm(a - e).item()
    ref = torch.linalg.vector_norm(e).item()
    return err / ref if ref > 0 else err


def assert_close(actual: Any, expected: Any, *, rtol: float, atol: float = 0.0,
                 name: str = "tensor") -> None:
    """Assert ``rms(a − e) ≤ rtol · rms(e) + atol`` for tensors or nested dicts/lists of them.

    Shapes must match exactly, non-finite entries must agree (same positions,
    same infinities). The message names the tensor (``name`` plus the key path),
    the relative RMSE, the max abs error and its index.
    """
    if isinstance(expected, dict) or isinstance(actual, dict):
        if not (isinstance(actual, dict) and isinstance(expected, dict)):
            raise AssertionError(f"{name}: one side is a dict, the other a {type(actual).__name__}")
        if set(actual) != set(expected):
            raise AssertionError(f"{name}: keys differ: {sorted(map(str, actual))} vs "
                                 f"{sorted(map(str, expected))}")
        for key in expected:
            assert_close(actual[key], expected[key], rtol=rtol, atol=atol, name=f"{name}[{key!r}]")
        return
    if isinstance(expected, (list, tuple)):
        if not isinstance(actual, (list, tuple)) or len(actual) != len(expected):
            raise AssertionError(f"{name}: sequence lengths differ")
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close(a, e, rtol=rtol, atol=atol, name=f"{name}[{i}]")
        return
    if not isinstance(expected, Tensor):
        if actual != expected:
            raise AssertionError(f"{name}: {actual!r} != {expected!r}")
        return
    if not isinstance(actual, Tensor):
        raise AssertionError(f"{name}: expected a tensor, got {type(actual).__name__}")
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected "
                             f"{tuple(expected.shape)}")
    a, e = actual.detach().double(), expected.detach().double()
    fa, fe = torch.isfinite(a), torch.isfinite(e)
    same_kind = torch.nan_to_num(a, nan=0.0, posinf=1.0, neginf=-1.0) * ~fa == \
        torch.nan_to_num(e, nan=0.0, posinf=1.0, neginf=-1.0) * ~fe
    if not torch.equal(fa, fe) or not bool(same_kind.all()):
        where = ((fa != fe) | ~same_kind).nonzero()
        raise AssertionError(f"{name}: non-finite entries differ (first at "
                             f"{tuple(where[0].tolist())}); "
                             f"actual has {int((~fa).sum())}, expected {int((~fe).sum())}")
    if a.numel() == 0:
        return
    a, e = a[fe], e[fe]
    diff = (a - e).abs()
    n = max(a.numel(), 1)
    rms_err = torch.linalg.vector_norm(a - e).item() / n ** 0.5
    rms_ref = torch.linalg.vector_norm(e).item() / n ** 0.5
    if rms_err <= rtol * rms_ref + atol:
        return
    i = int(diff.argmax())
    full = fe.nonzero()[i].tolist()
    raise AssertionError(
        f"{name}: relative RMSE {rms_err / rms_ref if rms_ref else float('inf'):.3e} "
        f"(rms error {rms_err:.3e}, rms expected {rms_ref:.3e}) exceeds rtol={rtol:g}, "
        f"atol={atol:g}; max abs error {diff.max().item():.3e} at {tuple(full)} "
        f"(actual {a[i].item():.6g}, expected {e[i].item():.6g}); shape {tuple(actual.shape)}")


def assert_state_close(actual: MemoryState, expected: MemoryState, *, rtol: float,
                       atol: float = 0.0, name: str = "state") -> None:
    """Two :class:`MemoryState` agree: params, rule state, position, step and, inside a
    chunk (``position > 0``), the chunk-start params."""
    if (actual.position, actual.step) != (expected.position, expected.step):
        raise AssertionError(f"{name}: (position, step) = {(actual.position, actual.step)} != "
                             f"expected {(expected.position, expected.step)}")
    assert_close(actual.params, expected.params, rtol=rtol, atol=atol, name=f"{name}.params")
    assert_close(actual.opt_state, expected.opt_state, rtol=rtol, atol=atol,
                 name=f"{name}.opt_state")
    if expected.position:
        assert_close(actual.chunk_params, expected.chunk_params, rtol=rtol, atol=atol,
                     name=f"{name}.chunk_params")


def _leaf_inputs(q, k, v, gates, memory, optimizer, memory_kwargs):
    """Fresh leaves (q, k, v, tensor gates, W_0) that require grad, for gradient comparison."""
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    gates = {n: (g.detach().clone().requires_grad_(True) if isinstance(g, Tensor) else g)
             for n, g in gates.items()}
    mem = make_memory(memory, q.shape[-1], v.shape[-1], **dict(memory_kwargs or {}))
    gen = torch.Generator().manual_seed(0)
    w0 = {n: p.requires_grad_(True)
          for n, p in mem.init_params(generator=gen, dtype=q.dtype, device=q.device).items()}
    state = initial_state(mem, make_rule(optimizer), batch=q.shape[0], heads=q.shape[1],
                          params=w0, chunk_size=None, dtype=q.dtype, device=q.device)
    return q, k, v, gates, w0, state


def assert_backend_matches_reference(backend: str, memory: str = "linear", objective: str = "l2",
                                     optimizer: str = "momentum", *, q: Tensor, k: Tensor,
                                     v: Tensor, chunk_size: int = 1, gates: dict | None = None,
                                     reference: str = "reference", check_grads: bool = True,
                                     rtol: float = 1e-6, grad_rtol: float | None = None,
                                     memory_kwargs: dict | None = None,
                                     objective_kwargs: dict | None = None) -> None:
    """``memory_scan`` on ``backend`` equals ``reference``: reads ``y``, the final state and,
    with ``check_grads``, the gradients of ``⟨y, R⟩`` (``R`` a fixed random cotangent) w.r.t.
    ``q, k, v``, every tensor gate and the memory's initial parameters ``W_0``.

    ``reference="contract"`` compares against the kit's own contract loop
    (:func:`nlframe.testing.contract.contract_scan`) instead of a backend.
    """
    gates = dict(gates or {})
    grad_rtol = rtol * 10 if grad_rtol is None else grad_rtol
    common = dict(memory=memory, objective=objective, optimizer=optimizer, chunk_size=chunk_size,
                  memory_kwargs=memory_kwargs, objective_kwargs=objective_kwargs)
    results = []
    for name in (backend, reference):
        qq, kk, vv, gg, w0, state = _leaf_inputs(q, k, v, gates, memory, optimizer, memory_kwargs)
        with torch.set_grad_enabled(check_grads):
            if name == CONTRACT:
                y, st = contract_scan(build_request(qq, kk, vv, state=state, **gg, **common))
            else:
                y, st = memory_scan(qq, kk, vv, backend=name, state=state, **gg, **common)
        grads = {}
        if check_grads:
            cot = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=y.dtype)
            leaves = {"q": qq, "k": kk, "v": vv, **{f"gate {n}": g for n, g in gg.items()
                                                     if isinstance(g, Tensor)},
                      **{f"W_0[{n!r}]": p for n, p in w0.items()}}
            got = torch.autograd.grad((y * cot).sum(), list(leaves.values()), allow_unused=True)
            grads = {n: (torch.zeros_like(leaves[n]) if g is None else g)
                     for n, g in zip(leaves, got)}
        results.append((y, st, grads))
    (y, st, grads), (y_ref, st_ref, grads_ref) = results
    what = (f"backend {backend!r} vs {reference!r} (memory={memory!r}, objective={objective!r}, "
            f"optimizer={optimizer!r}, chunk_size={chunk_size}, q {tuple(q.shape)}, "
            f"v {tuple(v.shape)})")
    try:
        assert_close(y, y_ref, rtol=rtol, name="y")
        assert_state_close(st, st_ref, rtol=rtol)
        for n in grads_ref:
            assert_close(grads[n], grads_ref[n], rtol=grad_rtol, name=f"grad of {n}")
    except AssertionError as exc:
        raise AssertionError(f"{what}: {exc}") from None


def seeded_state(q: Tensor, v: Tensor, *, memory: str = "linear", optimizer: str = "momentum",
                 memory_kwargs: dict | None = None, seed: int = 0, **_: Any) -> MemoryState:
    """The fresh scan state for ``q (B, H, T, Dk)``, ``v (…, Dv)`` with ``W_0`` from
    ``init_params`` seeded by ``seed`` (``memory_scan`` without a state draws ``W_0``
    from the global RNG, so two calls would not start alike)."""
    mem = make_memory(memory, q.shape[-1], v.shape[-1], **dict(memory_kwargs or {}))
    w0 = mem.init_params(generator=torch.Generator().manual_seed(seed), dtype=q.dtype,
                         device=q.device)
    return initial_state(mem, make_rule(optimizer), batch=q.shape[0], heads=q.shape[1],
                         params=w0, dtype=q.dtype, device=q.device)


def _split_points(T: int, n: int, rng: random.Random) -> list[int]:
    return sorted(rng.sample(range(1, T), min(n, T - 1))) if T > 1 else []


def assert_streaming_consistent(q: Tensor, k: Tensor, v: Tensor, *, splits: Sequence[int] | None = None,
                                n_splits: int = 2, seed: int = 0, rtol: float = 1e-9,
                                **scan_kwargs: Any) -> None:
    """A scan of the whole stream equals scans of its pieces, each continuing from the
    previous state: ``scan([x1; x2]) = scan(x2, state=scan(x1).state)``.

    ``splits`` are the token indices where pieces start (default: ``n_splits``
    random points, drawn with ``seed``, which fall inside chunks as often as
    not); per-token gates among ``scan_kwargs`` are split with the stream.
    """
    T = q.shape[2]
    points = list(splits) if splits is not None else _split_points(T, n_splits, random.Random(seed))
    if any(not 0 < p < T for p in points) or points != sorted(set(points)):
        raise ValueError(f"splits must be increasing token indices in (0, {T}); got {points}")
    if scan_kwargs.get("state") is None:
        scan_kwargs["state"] = seeded_state(q, v, **scan_kwargs)
    y_full, st_full = memory_scan(q, k, v, **scan_kwargs)
    ys, state = [], scan_kwargs.pop("state")
    for a, b in zip([0, *points], [*points, T]):
        piece = {n: (g[:, :, a:b] if n in SCAN_GATES and isinstance(g, Tensor) else g)
                 for n, g in scan_kwargs.items()}
        y, state = memory_scan(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], state=state, **piece)
        ys.append(y)
    try:
        assert_close(torch.cat(ys, dim=2), y_full, rtol=rtol, name="y")
        assert_state_close(state, st_full, rtol=rtol)
    except AssertionError as exc:
        desc = ", ".join(f"{n}={v!r}" for n, v in scan_kwargs.items()
                         if n in ("memory", "objective", "optimizer", "backend", "chunk_size"))
        raise AssertionError(f"streaming in pieces split at {points} of T={T} ({desc}) differs "
                             f"from one scan: {exc}") from None
