"""``Level.scan_routed``: a level whose keys, values and gates come from its own
chunk-start reads, against a float64 loop written from the equations (DGD, NL eq. 88
with the gradient at the chunk start, eq. 90), and against the scan contract itself."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nlframe.level import ContextFlow, Level

B, H, D, C, ALPHA = 2, 3, 4, 3, 0.1


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _route(read: torch.Tensor):
    """k = unit(tanh(r)), v = r, θ_t = ½σ(Σ r_t): every gate depends on the read."""
    k = _unit(torch.tanh(read))
    theta = 0.5 * torch.sigmoid(read.sum(-1))
    return ContextFlow(k, k, read, lr=theta, decay=ALPHA), (k, theta)


def _equations(x: torch.Tensor, W0: torch.Tensor, chunk: int = C):
    """Per chunk: r = W_c x (read at the chunk start), then per token of the chunk
    ``W ← W((1 − α)I − θ k kᵀ) − θ (W_c k − v) kᵀ``."""
    W, reads = W0.expand(B, H, D, D), []
    eye = torch.eye(D, dtype=x.dtype)
    for lo in range(0, x.shape[2], chunk):
        Wc = W
        r = x[:, :, lo:lo + chunk] @ Wc.transpose(-1, -2)
        reads.append(r)
        flow, _ = _route(r)
        for t in range(r.shape[2]):
            k, v, th = flow.k[:, :, t], flow.v[:, :, t], flow.lr[:, :, t, None, None]
            e = (Wc @ k[..., None])[..., 0] - v
            W = W @ ((1 - ALPHA) * eye - th * k[..., :, None] * k[..., None, :]) \
                - th * e[..., :, None] * k[..., None, :]
    return torch.cat(reads, 2), W


def _level(backend: str, chunk: int = C) -> Level:
    return Level.build("linear", "l2", "dgd", dim_k=D, dim_v=D, chunk_size=chunk,
                       read="chunk_start", write="token", backend=backend)


def _inputs(T: int):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, H, T, D, generator=gen, dtype=torch.float64, requires_grad=True)
    W0 = (0.5 * torch.randn(H, D, D, generator=gen, dtype=torch.float64)).requires_grad_()
    return x, W0


def _streamed(level: Level, x: torch.Tensor, W0: torch.Tensor, cuts) -> tuple:
    """The reads and final state of ``x`` fed to ``level.scan_routed`` in pieces cut at
    ``cuts`` (anywhere, inside chunks too), from ``W0``."""
    state = level.init_state(batch=B, heads=H, params={"W": W0}, dtype=torch.float64)
    reads, T = [], x.shape[2]
    for lo, hi in zip((0, *cuts), (*cuts, T)):
        r, kept, state = level.scan_routed(x[:, :, lo:hi], state, _route)
        assert len(r) == len(kept) and all(t.shape[2] for t in r)
        reads += r
    return torch.cat(reads, 2), state


@pytest.mark.parametrize("backend", ["reference", "chunked"])
@pytest.mark.parametrize("cuts", [(), (1,), (4,), (3, 5), (2, 7)])
def test_routed_scan_equals_the_equations(backend, cuts):
    T = 10  # three whole chunks and an open one
    x, W0 = _inputs(T)
    y, state = _streamed(_level(backend), x, W0, cuts)
    want_y, want_W = _equations(x, W0)
    torch.testing.assert_close(y, want_y, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state.params["W"], want_W, rtol=1e-10, atol=1e-12)
    assert state.step == T and state.position == T % C
    # gradients to the inputs and the initial state, through reads, routes and writes
    w = torch.randn_like(y)
    got = torch.autograd.grad((y * w).sum() + state.params["W"].sum(), (x, W0))
    want = torch.autograd.grad((want_y * w).sum() + want_W.sum(), (x, W0))
    for g, h in zip(got, want):
        torch.testing.assert_close(g, h, rtol=1e-9, atol=1e-11)


@settings(max_examples=15, deadline=None)
@given(chunk=st.integers(1, 6), T=st.integers(1, 14), data=st.data())
def test_any_chunk_size_and_any_splits_equal_the_equations(chunk, T, data):
    cuts = sorted(set(data.draw(st.lists(st.integers(1, T), max_size=3))) - {T})
    x, W0 = _inputs(T)
    y, state = _streamed(_level("chunked", chunk), x, W0, cuts)
    want_y, want_W = _equations(x, W0, chunk)
    torch.testing.assert_close(y, want_y, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(state.params["W"], want_W, rtol=1e-10, atol=1e-12)


def test_a_route_that_ignores_the_read_is_the_scan_contract():
    """With keys, values and gates fixed in advance, the routed reads are the scan's
    ``read="chunk_start"`` outputs and the states agree."""
    T = 8
    gen = torch.Generator().manual_seed(1)
    x, k, v = (torch.randn(B, H, T, D, generator=gen, dtype=torch.float64) for _ in range(3))
    theta = torch.rand(B, H, T, generator=gen, dtype=torch.float64)
    level = Level.build("mlp", "l2", "dgd", dim_k=D, dim_v=D, chunk_size=C, read="chunk_start",
                        write="token", self_target=True, backend="reference",
                        memory_kwargs={"hidden": 5})
    state = level.init_state(batch=B, heads=H, dtype=torch.float64)
    y, want = level.scan(ContextFlow(x, k, v, lr=theta, decay=ALPHA), state)
    at = iter(range(0, T, C))

    def route(read):
        lo = next(at)
        n = read.shape[2]
        return ContextFlow(read, k[:, :, lo:lo + n], v[:, :, lo:lo + n],
                           lr=theta[:, :, lo:lo + n], decay=ALPHA), None

    reads, _, got = level.scan_routed(x, state, route)
    torch.testing.assert_close(torch.cat(reads, 2), y, rtol=1e-12, atol=1e-12)
    for name in want.params:
        torch.testing.assert_close(got.params[name], want.params[name], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.surprise, want.surprise, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cuts", [(), (4,), (3, 7)])
def test_an_mlp_level_reads_ahead_with_its_writes_like_the_reference(cuts):
    """A self-target MLP level on ``chunked`` reads each next chunk inside the fused DGD
    tile that writes the chunk before it (``Level.write_only(read_after=…)``); its reads,
    state and gradients to x and W₀ equal the ``reference`` backend's, which reads
    separately, the stream whole and split inside chunks."""
    from unittest import mock

    from nlframe_plugins.backends.dgd_tile import DGDWriteTile

    T = 10
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(B, H, T, D, generator=gen, dtype=torch.float64, requires_grad=True)
    init = {"W1": 0.5 * torch.randn(H, 5, D, generator=gen, dtype=torch.float64),
            "W2": 0.5 * torch.randn(H, D, 5, generator=gen, dtype=torch.float64)}
    init = {n: w.requires_grad_() for n, w in init.items()}
    ahead, real = [], DGDWriteTile.apply

    def spy(*args):
        ahead.append(args[3] is not None)
        return real(*args)

    results = []
    for backend in ("reference", "chunked"):
        level = Level.build("residual-mlp", "l2", "dgd", dim_k=D, dim_v=D, chunk_size=C,
                            read="chunk_start", write="token", self_target=True,
                            backend=backend, memory_kwargs={"hidden": 5})
        state = level.init_state(batch=B, heads=H, params=dict(init), dtype=torch.float64)
        reads = []
        with mock.patch.object(DGDWriteTile, "apply", spy):
            for lo, hi in zip((0, *cuts), (*cuts, T)):
                r, _, state = level.scan_routed(x[:, :, lo:hi], state, _route)
                reads += r
        y = torch.cat(reads, 2)
        total = y.square().sum() + sum(p.square().sum() for p in state.params.values())
        results.append((y, state, torch.autograd.grad(total, [x, *init.values()])))
    assert any(ahead), "no fused tile read ahead"
    (y0, s0, g0), (y1, s1, g1) = results
    torch.testing.assert_close(y1, y0, rtol=1e-10, atol=1e-12)
    for name in s0.params:
        torch.testing.assert_close(s1.params[name], s0.params[name], rtol=1e-10, atol=1e-12)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_an_empty_call_routes_one_empty_read_and_writes_nothing():
    level = _level("reference")
    state = level.init_state(batch=B, heads=H, dtype=torch.float64)
    reads, kept, new = level.scan_routed(torch.zeros(B, H, 0, D, dtype=torch.float64), state,
                                         _route)
    assert reads[0].shape == (B, H, 0, D) and kept[0][0].shape == (B, H, 0, D)
    assert new is state


def test_a_level_read_after_its_writes_cannot_be_routed():
    level = Level.build("linear", "l2", "dgd", dim_k=D, dim_v=D, chunk_size=C)
    state = level.init_state(batch=B, heads=H)
    with pytest.raises(ValueError, match="read='after_write'"):
        level.scan_routed(torch.zeros(B, H, 2, D), state, _route)
