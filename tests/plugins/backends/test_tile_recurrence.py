"""The hand-differentiated tile loop of chunk writes (``tile_recurrence.ChunkWriteTile``)
against the float64 oracle of the equations, against autograd through the plain loop,
and against finite differences (``gradcheck``)."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

import nlframe
from nlframe_plugins.backends import chunked_levels
from nlframe_plugins.backends.tile_recurrence import ChunkWriteTile, tile_spec
from nlframe.scan import make_memory, make_objective

from .scan_cases import tile
from .test_scan_modes import (DT, FAMILIES, GRAD_TOL, T, Case, _functional, _leaves, _with_leaves,
                              build_state, check_grads, check_state, close, make_inputs, oracle,
                              oracle_grads, scan)

# the momentum rule without η (GD with retention α, the CMS levels' rule), chunk
# sizes with one and several tokens, two tile lengths, both objectives, exact 0/1 gates
CASES = [
    (Case("mlp", "l2", chunk=1, **FAMILIES["c"]), 4),
    (Case("residual-mlp", "l2", chunk=2, **FAMILIES["c"]), 4),
    (Case("mlp", "dot", chunk=1, **FAMILIES["c"]), 4),
    (Case("mlp", "l2", chunk=3, **FAMILIES["c"]), 6),
    (Case("mlp", "l2", chunk=1, exact=True, **FAMILIES["c"]), 4),
    (Case("residual-mlp", "dot", chunk=1, exact=True, **FAMILIES["c"]), 6),
]


def _without_eta(case: Case) -> dict:
    inp = make_inputs(case)
    inp["momentum"] = None  # η not given: the momentum rule is GD with retention
    return inp


def _counting(function=ChunkWriteTile):
    """A list that records the first argument's shape of every ``function.apply`` call,
    and the patch that records them."""
    calls = []
    real = function.apply

    def spy(*args):
        calls.append(args[0].shape)
        return real(*args)

    return calls, mock.patch.object(function, "apply", spy)


@pytest.mark.parametrize("case,size", CASES, ids=lambda x: str(x))
def test_fused_tiles_match_the_oracle(case, size):
    """Outputs, final state and outer gradients (q, k, v, θ, α, W0, S0) of the fused tile
    loop equal the float64 oracle of NL eq. 71 over several tiles (T = 11)."""
    inp = _without_eta(case)
    calls, spy = _counting()
    leaves = _leaves(inp)
    with tile(size), spy:
        y, state = scan("chunked", case, _with_leaves(inp, leaves))
    assert calls, "the fused tile loop did not run"
    expected = oracle(case, inp)
    check_state(y, state, expected, T)
    got = dict(zip(leaves, torch.autograd.grad(_functional(y, state.params, state.momentum),
                                               list(leaves.values()))))
    check_grads(got, oracle_grads(case, inp))


TRUNCATED = [(Case("mlp", "l2", chunk=1, truncate=True, **FAMILIES["c"]), 4),
             (Case("residual-mlp", "l2", chunk=2, truncate=True, **FAMILIES["c"]), 4),
             (Case("mlp", "dot", chunk=1, truncate=True, exact=True, **FAMILIES["c"]), 6)]


@pytest.mark.parametrize("cuts", [[0, 11], [0, 3, 11]], ids=str)
@pytest.mark.parametrize("case,size", TRUNCATED, ids=lambda x: str(x))
def test_fused_truncated_tiles_match_the_oracle(case, size, cuts):
    """``inner_grad = "truncated"``: the fused tiles' outputs, state and outer gradients
    equal the float64 oracle whose writes start from detached chunk-start states, the
    stream fed whole and in two pieces."""
    check_streamed_against_the_oracle(case, _without_eta(case), size, cuts, ChunkWriteTile)


def check_streamed_against_the_oracle(case: Case, inp: dict, size: int, cuts: list[int],
                                      function) -> None:
    """The chunked scan of ``inp`` with tiles of ``size``, fed in the pieces between
    ``cuts``: ``function`` ran, and outputs, final state and outer gradients equal the
    float64 oracle."""
    calls, spy = _counting(function)
    leaves = _leaves(inp)
    full = _with_leaves(inp, leaves)
    state, ys = None, []
    with tile(size), spy:
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            y, state = scan("chunked", case, full, state=state, lo=lo, hi=hi)
            ys.append(y)
    assert calls, f"{function.__name__} did not run"
    y = torch.cat(ys, 2)
    check_state(y, state, oracle(case, inp), T)
    got = dict(zip(leaves, torch.autograd.grad(_functional(y, state.params, state.momentum),
                                               list(leaves.values()))))
    check_grads(got, oracle_grads(case, inp))


@pytest.mark.parametrize("truncate", [False, True])
@pytest.mark.parametrize("clip", [None, 0.3])
@pytest.mark.parametrize("memory", ["mlp", "residual-mlp"])
def test_fused_tiles_match_autograd_through_the_plain_loop(memory, clip, truncate):
    """With a per-token surprise clip (rows both above and below it) the fused loop's
    outputs, surprise and gradients equal autograd through the loop it replaces."""
    case = Case(memory, "l2", chunk=1, truncate=truncate, **FAMILIES["c"])
    compare_fused_with_plain(case, _without_eta(case), clip, ChunkWriteTile)


def compare_fused_with_plain(case: Case, inp: dict, clip: float | None, function) -> None:
    """``memory_scan`` of ``inp`` (tiles of 4) with ``FUSED_TILES`` on (``function`` runs)
    and off (it does not): outputs, surprise, state and gradients agree."""
    results = []
    for fused in (True, False):
        leaves = _leaves(inp)
        full = _with_leaves(inp, leaves)
        gates = {n: full[n] for n in ("decay", "momentum") if full[n] is not None}
        calls, spy = _counting(function)
        with tile(4), spy, mock.patch.object(chunked_levels, "FUSED_TILES", fused):
            y, state = nlframe.memory_scan(
                full["q"], full["k"], full["v"], memory=case.memory, objective=case.objective,
                optimizer=case.optimizer, lr=full["lr"], chunk_size=case.chunk,
                backend="chunked", read=case.read, write=case.write,
                self_target=case.self_target, grad_clip=clip, memory_kwargs=case.mkw,
                state=build_state(case, full), truncate=case.truncate, **gates)
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


@pytest.mark.parametrize("retention", [True, False])
@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("C,residual,objective", [(1, False, "l2"), (2, True, "l2"), (1, False, "dot")])
def test_chunk_write_tile_gradcheck(C, residual, objective, clip, retention):
    """Finite differences of every input, float64: keys, targets, both weights, the kernel
    weights (drawn dense: only the block-lower part may matter) and the retention factors
    (``None``: none)."""
    gen = torch.Generator().manual_seed(3)
    N, chunks, Din, Dh = 2, 3, 3, 5
    R = chunks * C
    memory = make_memory("residual-mlp" if residual else "mlp", Din, Din, hidden=Dh)
    spec = tile_spec(memory, make_objective(objective), C, clip)
    args = [torch.randn(N, R, Din, generator=gen, dtype=DT),
            torch.randn(N, R, Din, generator=gen, dtype=DT),
            0.5 * torch.randn(N, Dh, Din, generator=gen, dtype=DT),
            0.5 * torch.randn(N, Din, Dh, generator=gen, dtype=DT),
            0.4 * torch.rand(N, R, R, generator=gen, dtype=DT),
            0.5 + 0.5 * torch.rand(N, R, 1, generator=gen, dtype=DT)]
    if not retention:
        args.pop()
    args = [a.requires_grad_() for a in args]

    def f(U, V, W1, W2, Mw, Dr=None):
        H, E1, E2, _ = ChunkWriteTile.apply(U, V, W1, W2, Mw, Dr, spec)
        return H, E1, E2

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("activation", ["gelu", "silu", "tanh"])
def test_a_memory_without_a_closed_form_second_derivative_gets_it_by_autograd(activation):
    from nlframe_plugins.backends.tile_recurrence import _second_derivative

    spec = tile_spec(make_memory("mlp", 3, 3, hidden=4, activation=activation),
                     make_objective("l2"), 1, None)
    z = torch.linspace(-3, 3, 13, dtype=DT)
    closed = _second_derivative(spec, z)
    assert torch.allclose(_second_derivative({**spec, "act_grad2": None}, z), closed,
                          rtol=1e-12, atol=1e-14)


def test_plain_loop_is_what_runs_where_the_fused_one_does_not_apply():
    """Momentum with η given keeps the plain loop (its S reaches W inside the tile)."""
    case = Case("mlp", "l2", chunk=1, **FAMILIES["c"])
    inp = make_inputs(case)
    calls, spy = _counting()
    with tile(4), spy:
        y, state = scan("chunked", case, inp)
    assert not calls
    check_state(y, state, oracle(case, inp), T)
