"""Shared float64 inputs and comparisons for the backend tests."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any
from unittest import mock

import torch
from hypothesis import strategies as st
from torch import Tensor

import nlframe
from nlframe.level import MemoryState
from nlframe.scan import initial_state, make_memory, make_rule
from nlframe_plugins.backends.chunked import ChunkedBackend

DT = torch.float64
RTOL = 1e-8
ATOL = 1e-11


def rel_err(actual: Tensor, expected: Tensor) -> float:
    """``‖a − e‖ / max(‖e‖, 1e-30)``."""
    a, e = actual.detach().to(DT), expected.detach().to(DT)
    return float((a - e).norm() / e.norm().clamp_min(1e-30))


def assert_close(actual: Any, expected: Any, what: str, rtol: float = RTOL, atol: float = ATOL):
    """``‖a − e‖ ≤ rtol‖e‖ + atol`` for tensors or dicts of tensors, with a message
    naming the tensor and its relative error."""
    if isinstance(expected, dict):
        assert set(actual) == set(expected), f"{what}: keys {sorted(actual)} != {sorted(expected)}"
        for key in expected:
            assert_close(actual[key], expected[key], f"{what}[{key!r}]", rtol, atol)
        return
    if expected is None or actual is None:
        assert actual is None and expected is None, f"{what}: one gradient is None"
        return
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = float((actual.detach() - expected.detach()).norm())
    bound = rtol * float(expected.detach().norm()) + atol
    assert err <= bound, f"{what}: |a-e| = {err:.3e} > {bound:.3e} (rel {rel_err(actual, expected):.2e})"


@contextmanager
def tile(size: int | None):
    """Run the chunked backend with tiles of ``size`` tokens (``None``: the default)."""
    if size is None:
        yield
    else:
        with mock.patch.object(ChunkedBackend, "tile", size):
            yield


def gates(gen: torch.Generator, shape, *, lr_max: float = 1.0, exact: bool = True):
    """Per-token ``(θ, α, η)`` in ``[0, lr_max] × [0, 1] × [0, 1]``; with ``exact``, about a
    fifth of the entries are exactly 0 or exactly the upper bound."""
    out = []
    for hi in (lr_max, 1.0, 1.0):
        x = torch.rand(shape, generator=gen, dtype=DT) * hi
        if exact:
            pick = torch.rand(shape, generator=gen, dtype=DT)
            x = torch.where(pick < 0.1, torch.zeros_like(x), x)
            x = torch.where(pick > 0.9, torch.full_like(x, hi), x)
        out.append(x)
    return tuple(out)


def qkv(gen: torch.Generator, B: int, H: int, T: int, Dk: int, Dv: int):
    """Queries ``N(0, 1)``, keys of norm ≤ 1 (so θ ≤ 1 keeps the delta rule stable), values ``N(0, 1)``."""
    q = torch.randn(B, H, T, Dk, generator=gen, dtype=DT)
    k = torch.randn(B, H, T, Dk, generator=gen, dtype=DT)
    k = k / k.norm(dim=-1, keepdim=True).clamp_min(1.0)
    v = torch.randn(B, H, T, Dv, generator=gen, dtype=DT)
    return q, k, v


def random_state(gen: torch.Generator, memory: str, B: int, H: int, Dk: int, Dv: int,
                 memory_kwargs: dict | None = None, scale: float = 0.3) -> MemoryState:
    """A fresh state (position 0) at random parameters and random momentum."""
    mem = make_memory(memory, Dk, Dv, **(memory_kwargs or {}))
    rule = make_rule("momentum")
    params = {n: scale * torch.randn(B, H, *s, generator=gen, dtype=DT)
              for n, s in mem.param_shapes().items()}
    state = initial_state(mem, rule, batch=B, heads=H, params=params)
    state.opt_state = {"momentum": {n: 0.1 * torch.randn_like(p) for n, p in params.items()}}
    return state


def functional_grads(out: dict[str, Tensor], leaves: dict[str, Tensor]) -> dict[str, Tensor]:
    """Gradients w.r.t. every leaf of ``Σ_n (out[n]·w_n).sum()`` with fixed random
    float64 weights ``w_n`` (drawn in name order, cast to ``out[n]``'s dtype); zeros for
    a leaf the outputs do not depend on."""
    gen = torch.Generator().manual_seed(99)
    total = sum((out[n] * torch.randn(out[n].shape, generator=gen, dtype=DT).to(out[n].dtype)).sum()
                for n in sorted(out))
    names = sorted(leaves)
    g = torch.autograd.grad(total, [leaves[n] for n in names], allow_unused=True)
    return {n: torch.zeros_like(leaves[n]) if d is None else d for n, d in zip(names, g)}


def leaves_of(state: MemoryState) -> dict[str, Tensor]:
    return {**{f"W0.{n}": p for n, p in state.params.items()},
            **{f"S0.{n}": p for n, p in state.momentum.items()}}


def with_leaves(state: MemoryState, leaves: dict[str, Tensor]) -> MemoryState:
    params = {n: leaves[f"W0.{n}"] for n in state.params}
    mom = {n: leaves[f"S0.{n}"] for n in state.momentum}
    return MemoryState(params=params, opt_state={"momentum": mom}, chunk_params=dict(params),
                       position=0, chunk_size=state.chunk_size, step=0)


def scan_with_grads(backend: str, inputs: dict[str, Tensor], state: MemoryState, *,
                    tile_size: int | None = None, grads: bool = True, **kw):
    """Run one scan; return its outputs and the gradients of a fixed random
    functional of ``y``, the final params and momentum w.r.t. every input (inputs
    without ``momentum``: the scan's default η = 0)."""
    leaves = {n: t.detach().clone().requires_grad_(grads) for n, t in
              {**inputs, **leaves_of(state)}.items()}
    with tile(tile_size):
        y, new = nlframe.memory_scan(leaves["q"], leaves["k"], leaves["v"], lr=leaves["lr"],
                                     decay=leaves["decay"], momentum=leaves.get("momentum", 0.0),
                                     backend=backend, state=with_leaves(state, leaves), **kw)
    out = {"y": y, "params": new.params, "momentum": new.momentum,
           "chunk_params": new.chunk_params}
    if not grads:
        return out, new, {}
    gen = torch.Generator().manual_seed(1234)
    weight = lambda t: torch.randn(t.shape, generator=gen, dtype=DT)  # noqa: E731
    total = (y * weight(y)).sum()
    for group in (new.params, new.momentum):
        for n in sorted(group):
            total = total + (group[n] * weight(group[n])).sum()
    names = sorted(leaves)
    g = torch.autograd.grad(total, [leaves[n] for n in names], allow_unused=True)
    return out, new, dict(zip(names, g))


def compare_backends(inputs, state, *, backend="chunked", tile_size=None, grads=True,
                     rtol=RTOL, **kw):
    """Assert ``backend`` equals ``reference``: reads, final state, chunk bookkeeping
    and (with ``grads``) every input gradient."""
    ref, ref_state, ref_g = scan_with_grads("reference", inputs, state, grads=grads, **kw)
    out, new_state, g = scan_with_grads(backend, inputs, state, tile_size=tile_size,
                                        grads=grads, **kw)
    for key in ref:
        assert_close(out[key], ref[key], key, rtol=rtol)
    assert new_state.position == ref_state.position
    assert new_state.step == ref_state.step
    for name in ref_g:
        assert_close(g[name], ref_g[name], f"d/d{name}", rtol=rtol)


chunk_sizes = st.sampled_from([1, 2, 3, 7, 16, 64, 1000])
