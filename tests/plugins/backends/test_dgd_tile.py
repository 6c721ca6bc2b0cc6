"""The hand-differentiated tile of DGD token writes (``dgd_tile.DGDWriteTile``, the
self-modifying Titans' memories) against the float64 oracle of the equations, against
autograd through the plain tile, and against finite differences (``gradcheck``)."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from nlframe.scan import make_memory, make_objective
from nlframe_plugins.backends import chunked_levels
from nlframe_plugins.backends.dgd_tile import DGDWriteTile, _dot, _sum_of_products, dgd_spec
from nlframe_plugins.backends.tiles import TileGates

from .scan_cases import tile
from .test_scan_modes import DT, FAMILIES, T, Case, check_state, make_inputs, oracle, scan
from .test_tile_recurrence import _counting, check_streamed_against_the_oracle, compare_fused_with_plain

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
    check_streamed_against_the_oracle(case, make_inputs(case), size, cuts, DGDWriteTile)


@pytest.mark.parametrize("case,cuts", [
    (Case("residual-mlp", "l2", chunk=4, **FAMILIES["b"]), [0, 4, 8, 11]),
    (Case("mlp", "l2", chunk=3, truncate=True, **FAMILIES["b"]), [0, 3, 6, 9, 11]),
    (Case("mlp", "l2", chunk=2, exact=True, **FAMILIES["b"]), [0, 2, 4, 6, 8, 10, 11]),
    (Case("mlp", "l2", chunk=4, self_target=False, read="chunk_start", write="token",
          optimizer="dgd"), [0, 4, 8, 11]),
], ids=str)
def test_calls_of_one_whole_chunk_skip_the_tile_plan_like_the_oracle(case, cuts):
    """Pieces that are exactly one chunk from its start (a routed level's writes) take
    the one-tile path, and the stream still equals the float64 oracle: outputs, state
    and outer gradients."""
    real = chunked_levels._one_dgd_chunk
    with mock.patch.object(chunked_levels, "_one_dgd_chunk", side_effect=real) as lean:
        check_streamed_against_the_oracle(case, make_inputs(case), 4, cuts, DGDWriteTile)
    assert lean.call_count == len(cuts) - 2  # every piece but the last, shorter one


@pytest.mark.parametrize("truncate", [False, True])
@pytest.mark.parametrize("clip", [None, 0.3])
@pytest.mark.parametrize("memory", ["mlp", "residual-mlp"])
def test_fused_dgd_tiles_match_autograd_through_the_plain_tile(memory, clip, truncate):
    """With a per-token surprise clip (rows both above and below it) the fused tiles'
    outputs, surprise, state and gradients equal autograd through the tile they replace."""
    case = Case(memory, "l2", chunk=4, truncate=truncate, **FAMILIES["b"])
    compare_fused_with_plain(case, make_inputs(case), clip, DGDWriteTile)


@pytest.mark.parametrize("read", ["none", "and weights", "only"])
@pytest.mark.parametrize("self_target", [False, True])
@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("residual,objective", [(False, "l2"), (True, "l2"), (False, "dot")])
def test_dgd_write_tile_gradcheck(residual, objective, clip, self_target, read):
    """Finite differences of every input, float64: keys, values, the queries of the reads
    at both ends, both weights and the gates θ, α (through the tile kernel ``A, D`` they
    build); ``read="only"`` differentiates the reads alone (no gradient reaches the new
    weights but through the end read)."""
    gen = torch.Generator().manual_seed(5)
    N, L, Din, Dh = (2, 2), 4, 3, 5  # leading dims: batch, heads
    memory = make_memory("residual-mlp" if residual else "mlp", Din, Din, hidden=Dh)
    spec = dgd_spec(memory, make_objective(objective), clip, self_target)
    args = [torch.nn.functional.normalize(torch.randn(*N, L, Din, generator=gen, dtype=DT), dim=-1),
            torch.randn(*N, L, Din, generator=gen, dtype=DT),
            torch.randn(*N, 3, Din, generator=gen, dtype=DT),
            torch.randn(*N, 2, Din, generator=gen, dtype=DT),
            0.5 * torch.randn(*N, Dh, Din, generator=gen, dtype=DT),
            0.5 * torch.randn(*N, Din, Dh, generator=gen, dtype=DT),
            0.4 * torch.rand(*N, L, generator=gen, dtype=DT),
            0.2 * torch.rand(*N, L, generator=gen, dtype=DT)]
    args = [a.requires_grad_() for a in args]

    def f(K, V, Q, Qn, W1, W2, theta, alpha):
        g = TileGates.build(theta, alpha, torch.zeros_like(theta))
        reads = read != "none"
        W1n, W2n, y, yn, _ = DGDWriteTile.apply(K, V, Q if reads else None, Qn if reads else None,
                                                W1, W2, g.A, g.D, spec)
        return {"none": (W1n, W2n), "and weights": (W1n, W2n, y, yn), "only": (y, yn)}[read]

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


@pytest.mark.parametrize("N", [3, 20])
def test_batched_dot_takes_either_form(N):
    """``⟨a_n, b_n⟩`` per matrix, by one dot each (few matrices) or by ``vecdot``."""
    gen = torch.Generator().manual_seed(N)
    a, b = (torch.randn(N, 4, 5, generator=gen, dtype=DT) for _ in range(2))
    torch.testing.assert_close(_dot(a, b), (a * b).sum((1, 2)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("scaled", [False, True])
@pytest.mark.parametrize("rows,R,C", [(16, 3, 4), (2, 16, 16)], ids=["accumulated", "stacked"])
def test_sum_of_products_takes_either_form(rows, R, C, scaled):
    """``Σ_p l_pᵀ r_p (+ g·s)``, by one accumulating matmul per pair (many rows, a small
    output) or by one matmul of the stacked rows (few rows, a large output)."""
    gen = torch.Generator().manual_seed(rows)
    left = [torch.randn(2, rows, R, generator=gen, dtype=DT) for _ in range(3)]
    right = [torch.randn(2, rows, C, generator=gen, dtype=DT) for _ in range(3)]
    g, s = torch.randn(2, R, C, generator=gen, dtype=DT), torch.rand(2, 1, 1, generator=gen, dtype=DT)
    want = sum(x.transpose(1, 2) @ y for x, y in zip(left, right)) + (g * s if scaled else 0)
    out = torch.full((2, R, C), float("nan"), dtype=DT)
    _sum_of_products(left, right, out, (g, s) if scaled else None)
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
