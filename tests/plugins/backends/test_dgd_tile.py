"""The hand-differentiated tile of DGD token writes (``dgd_tile.DGDWriteTile``, the
self-modifying Titans' memories) against the float64 oracle of the equations, against
autograd through the plain tile, and against finite differences (``gradcheck``)."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

import nlframe
from nlframe.scan import make_memory, make_objective
from nlframe_plugins.backends import chunked_levels
from nlframe_plugins.backends.dgd_tile import DGDWriteTile, dgd_spec
from nlframe_plugins.backends.tiles import TileGates

from .scan_cases import tile
from .test_scan_modes import (DT, FAMILIES, GRAD_TOL, T, Case, _functional, _leaves, _with_leaves,
                              build_state, check_grads, check_state, close, make_inputs, oracle,
                              oracle_grads, scan)
from .test_tile_recurrence import _counting

# chunks of one token, of a tile (tile = chunk) and longer than a tile (tiles inside a
# chunk that do not open it keep the plain form), both objectives, exact 0/1 gates
CASES = [
    (Case("mlp", "l2", chunk=1, **FAMILIES["b"]), 4),
    (Case("residual-mlp", "l2", chunk=4, **FAMILIES["b"]), 4),
    (Case("mlp", "dot", chunk=3, **FAMILIES["b"]), 4),
    (Case("residual-mlp", "l2", chunk=5, **FAMILIES["b"]), 3),
    (Case("mlp", "l2", chunk=2, exact=True, **FAMILIES["b"]), 4),
    (Case("residual-mlp", "l2", chunk=3, truncate=True, **FAMILIES["b"]), 4),
    (Case("mlp", "l2", chunk=4, self_target=False, read="chunk_start", write="token",
          optimizer="dgd"), 4),
]


@pytest.mark.parametrize("cuts", [[0, 11], [0, 5, 11]], ids=str)
@pytest.mark.parametrize("case,size", CASES, ids=lambda x: str(x))
def test_fused_dgd_tiles_match_the_oracle(case, size, cuts):
    """Outputs, final state and outer gradients (q, k, v, θ, α, W0) of DGD token writes
    read at chunk starts, with the tiles that open a chunk run by ``DGDWriteTile``, equal
    the float64 oracle of NL eqs. 88, 90 (T = 11), the stream whole and split inside a chunk."""
    inp = make_inputs(case)
    calls, spy = _counting(DGDWriteTile)
    leaves = _leaves(inp)
    full = _with_leaves(inp, leaves)
    state, ys = None, []
    with tile(size), spy:
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            y, state = scan("chunked", case, full, state=state, lo=lo, hi=hi)
            ys.append(y)
    assert calls, "the fused DGD tile did not run"
    y = torch.cat(ys, 2)
    check_state(y, state, oracle(case, inp), T)
    got = dict(zip(leaves, torch.autograd.grad(_functional(y, state.params, state.momentum),
                                               list(leaves.values()))))
    check_grads(got, oracle_grads(case, inp))


@pytest.mark.parametrize("truncate", [False, True])
@pytest.mark.parametrize("clip", [None, 0.3])
@pytest.mark.parametrize("memory", ["mlp", "residual-mlp"])
def test_fused_dgd_tiles_match_autograd_through_the_plain_tile(memory, clip, truncate):
    """With a per-token surprise clip (rows both above and below it) the fused tiles'
    outputs, surprise, state and gradients equal autograd through the tile they replace."""
    case = Case(memory, "l2", chunk=4, truncate=truncate, **FAMILIES["b"])
    inp = make_inputs(case)
    results = []
    for fused in (True, False):
        leaves = _leaves(inp)
        full = _with_leaves(inp, leaves)
        calls, spy = _counting(DGDWriteTile)
        with tile(4), spy, mock.patch.object(chunked_levels, "FUSED_TILES", fused):
            y, state = nlframe.memory_scan(
                full["q"], full["k"], full["v"], memory=memory, objective="l2",
                optimizer="dgd", lr=full["lr"], decay=full["decay"], chunk_size=4,
                backend="chunked", read="chunk_start", write="token", self_target=True,
                grad_clip=clip, memory_kwargs=case.mkw, state=build_state(case, full),
                truncate=truncate)
        assert bool(calls) == fused
        total = _functional(y, state.params, None)
        grads = dict(zip(leaves, torch.autograd.grad(total, list(leaves.values()), allow_unused=True)))
        results.append((y, state, grads))
    (y1, s1, g1), (y0, s0, g0) = results
    close(y1, y0, "y")
    close(s1.surprise, s0.surprise, "surprise")
    for n in s0.params:
        close(s1.params[n], s0.params[n], f"params[{n}]")
    for n in g0:
        if g0[n] is not None:
            close(g1[n], g0[n], f"d/d{n}", GRAD_TOL)


@pytest.mark.parametrize("read", [False, True])
@pytest.mark.parametrize("self_target", [False, True])
@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("residual,objective", [(False, "l2"), (True, "l2"), (False, "dot")])
def test_dgd_write_tile_gradcheck(residual, objective, clip, self_target, read):
    """Finite differences of every input, float64: keys, values, the read's queries, both
    weights and the gates θ, α (through the tile kernel ``A, D`` they build)."""
    gen = torch.Generator().manual_seed(5)
    N, L, Din, Dh = 2, 4, 3, 5
    memory = make_memory("residual-mlp" if residual else "mlp", Din, Din, hidden=Dh)
    spec = dgd_spec(memory, make_objective(objective), clip, self_target)
    args = [torch.nn.functional.normalize(torch.randn(N, L, Din, generator=gen, dtype=DT), dim=-1),
            torch.randn(N, L, Din, generator=gen, dtype=DT),
            torch.randn(N, 3, Din, generator=gen, dtype=DT),
            0.5 * torch.randn(N, Dh, Din, generator=gen, dtype=DT),
            0.5 * torch.randn(N, Din, Dh, generator=gen, dtype=DT),
            0.4 * torch.rand(N, L, generator=gen, dtype=DT),
            0.2 * torch.rand(N, L, generator=gen, dtype=DT)]
    args = [a.requires_grad_() for a in args]

    def f(K, V, Q, W1, W2, theta, alpha):
        g = TileGates.build(theta, alpha, torch.zeros_like(theta))
        W1n, W2n, y, _ = DGDWriteTile.apply(K, V, Q if read else None, W1, W2, g.A, g.D, spec)
        return (W1n, W2n, y) if read else (W1n, W2n)

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("case", [Case("linear", "l2", chunk=3, **FAMILIES["b"]),
                                  Case("mlp", "l2", chunk=3, read="after_write", write="token",
                                       optimizer="dgd", self_target=True)], ids=str)
def test_plain_tile_is_what_runs_where_the_fused_one_does_not_apply(case):
    """A linear memory and reads after every write keep the plain tile."""
    inp = make_inputs(case)
    calls, spy = _counting(DGDWriteTile)
    with tile(4), spy:
        y, state = scan("chunked", case, inp)
    assert not calls
    check_state(y, state, oracle(case, inp), T)
