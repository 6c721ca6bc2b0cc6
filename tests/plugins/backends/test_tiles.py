"""Tile plans and the gate kernel against their recurrences."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from nlframe_plugins.backends.tiles import TileGates, TilePlan, segment_products

from .scan_cases import DT, assert_close, gates


@given(L=st.integers(1, 12), seed=st.integers(0, 2**16))
@example(L=1, seed=0)  # one slot: a token decoded at a time
def test_gate_kernel_matches_recurrences(L, seed):
    gen = torch.Generator().manual_seed(seed)
    th, al, et = gates(gen, (2, L))
    g = TileGates.build(th, al, et)
    for b in range(2):
        A = torch.zeros(L, L, dtype=DT)
        Bm = torch.zeros(L, L, dtype=DT)
        D, c, P = 1.0, 0.0, 1.0
        for j in range(L):
            for i in range(j + 1):
                Bm[j, i] = 1.0 if i == j else Bm[j - 1, i] * et[b, j]
                prev = A[j - 1, i] if j > 0 else 0.0
                A[j, i] = (1 - al[b, j]) * prev + Bm[j, i] * th[b, i]
            D, P = D * (1 - al[b, j]), P * et[b, j]
            c = (1 - al[b, j]) * c + P
            assert_close(g.D[b, j], torch.as_tensor(D, dtype=DT), f"D[{j}]")
            assert_close(g.c[b, j], torch.as_tensor(c, dtype=DT), f"c[{j}]")
            assert_close(g.P[b, j], torch.as_tensor(P, dtype=DT), f"P[{j}]")
        assert_close(g.A[b], A, "A")
        assert_close(g.Btheta[b], Bm * th[b][None, :], "Btheta")


@given(L=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_gate_kernel_without_momentum_is_the_kernel_at_zero_eta(L, seed):
    th, al, _ = gates(torch.Generator().manual_seed(seed), (2, L))
    g = TileGates.build(th, al, torch.zeros_like(th))
    A, D = TileGates.without_momentum(th, al)
    assert torch.equal(A, g.A) and torch.equal(D, g.D)
    A, D = TileGates.without_momentum(th, None)
    g = TileGates.build(th, torch.zeros_like(th), torch.zeros_like(th))
    assert torch.equal(A, g.A) and torch.equal(D, g.D)

    # eta=None (η ≡ 0 known in advance): every gate of the kernel at η = 0
    g0, g = TileGates.build(th, al, torch.zeros_like(th)), TileGates.build(th, al, None)
    for name in ("D", "c", "P", "A", "Btheta"):
        assert_close(getattr(g, name), getattr(g0, name), name, rtol=1e-14, atol=0)


def test_segment_products_with_zeros_have_finite_gradients():
    x = torch.tensor([0.5, 0.0, 2.0, 0.0, 0.3], dtype=DT, requires_grad=True)
    m = segment_products(x)
    expected = torch.zeros(5, 5, dtype=DT)
    for j in range(5):
        for i in range(j + 1):
            expected[j, i] = torch.prod(x.detach()[i + 1:j + 1])
    assert_close(m, expected, "segment products")
    assert torch.autograd.gradcheck(segment_products, (x,))


@pytest.mark.parametrize("T,chunk,position,max_tile", [(10, 4, 0, 64), (10, 4, 3, 64),
                                                        (20, 7, 5, 3), (5, 100, 98, 64),
                                                        (130, 100, 0, 64)])
def test_within_chunks_plan_covers_tokens_in_order_inside_chunks(T, chunk, position, max_tile):
    plan = TilePlan.within_chunks(T, chunk, position, max_tile, "cpu")
    tokens = plan.index[plan.valid].tolist()
    assert tokens == list(range(T))
    assert plan.size <= max_tile
    for t, opens in enumerate(plan.opens_chunk):
        first = int(plan.index[t, 0])
        last = int(plan.index[t, plan.last[t]])
        # every tile stays inside one chunk; it opens one iff it starts at a boundary
        assert (first + position) // chunk == (last + position) // chunk
        assert opens == ((first + position) % chunk == 0)


def test_within_chunks_plans_are_kept_by_their_arguments():
    """A plan asked for again is the one built before (decoding asks for the same few on
    every token), equal to a fresh build; other arguments give other plans."""
    plan = TilePlan.within_chunks(1, 32, 5, 64, "cpu")
    assert TilePlan.within_chunks(1, 32, 5, 64, "cpu") is plan
    fresh = TilePlan._within_chunks(1, 32, 5, 64, "cpu")
    for field in ("index", "valid", "last"):
        assert torch.equal(getattr(plan, field), getattr(fresh, field))
    assert (plan.opens_chunk, plan.last_slots, plan.end_tokens) == \
        (fresh.opens_chunk, fresh.last_slots, fresh.end_tokens)
    assert TilePlan.within_chunks(1, 32, 6, 64, "cpu") is not plan


def test_gather_and_scatter_round_trip():
    x = torch.arange(2 * 3 * 10, dtype=DT).view(2, 3, 10)
    for plan in (TilePlan.aligned(10, 4, "cpu"), TilePlan.within_chunks(10, 3, 1, 64, "cpu")):
        g = plan.gather(x[..., None])
        assert g.shape == (plan.index.shape[0], 2, 3, plan.size, 1)
        assert (g[..., 0].movedim(0, 2)[..., ~plan.valid] == 0).all()
        assert torch.equal(plan.scatter(g)[..., 0], x)
