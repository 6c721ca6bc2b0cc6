"""The tile end of momentum writes (tile_end.TileEnd) against autograd of its formula."""

from __future__ import annotations

import pytest
import torch

from nlframe_plugins.backends.tile_end import TileEnd, tile_end

DT = torch.float64
B, H, R, O, I = 2, 3, 5, 4, 6


def _inputs(seed: int, *, expand: bool = False) -> dict:
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=gen, dtype=DT)  # noqa: E731
    W = rnd(1, H, O, I).expand(B, H, O, I) if expand else rnd(B, H, O, I)  # a learned init
    return {"W": W, "S": rnd(B, H, O, I), "E": rnd(B, H, R, O), "X": rnd(B, H, R, I),
            "D": torch.rand(B, H, generator=gen, dtype=DT), "c": rnd(B, H),
            "P": torch.rand(B, H, generator=gen, dtype=DT), "a": rnd(B, H, R), "b": rnd(B, H, R)}


def _formula(W, S, E, X, D, c, P, a, b):
    """``W_L = D W + c S + Eᵀ(a∘X)``, ``S_L = P S + Eᵀ(b∘X)``, written out for autograd."""
    ET = E.transpose(-1, -2)
    newW = D[..., None, None] * W + ET @ (X * a[..., None])
    if c is not None:
        newW = newW + c[..., None, None] * S
    newS = None
    if b is not None:
        newS = ET @ (X * b[..., None])
        if P is not None:
            newS = newS + P[..., None, None] * S
    return newW, newS


VARIANTS = {"momentum": {}, "no S_L": {"b": None}, "no momentum": {"c": None, "P": None},
            "no momentum, no S": {"c": None, "P": None, "b": None, "S": None},
            "no momentum, S_L": {"c": None, "P": None, "S": None}}


@pytest.mark.parametrize("expand", [False, True], ids=["per-element W", "expanded W"])
@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_tile_end_matches_autograd_of_its_formula(variant, expand):
    """Values and the gradients to every input (random output weights, float64) equal
    autograd through the formula, for every combination of the optional terms."""
    base = _inputs(0, expand=expand)
    names = list(base)
    gen = torch.Generator().manual_seed(1)
    outs = {}
    for how in ("fused", "formula"):
        inp = {n: (None if n in VARIANTS[variant] else base[n].detach().clone().requires_grad_())
               for n in names}
        args = [inp[n] for n in names]
        newW, newS = TileEnd.apply(*args) if how == "fused" else _formula(*args)
        assert (newS is None) == (inp["b"] is None)
        gen.manual_seed(1)
        total = (newW * torch.randn(newW.shape, generator=gen, dtype=DT)).sum()
        if newS is not None:
            total = total + (newS * torch.randn(newS.shape, generator=gen, dtype=DT)).sum()
        leaves = [x for x in args if x is not None]
        grads = torch.autograd.grad(total, leaves, allow_unused=True)
        outs[how] = (newW, newS, grads)
    fW, fS, fg = outs["fused"]
    rW, rS, rg = outs["formula"]
    torch.testing.assert_close(fW, rW, rtol=1e-12, atol=1e-12)
    if rS is not None:
        torch.testing.assert_close(fS, rS, rtol=1e-12, atol=1e-12)
    for got, want in zip(fg, rg):  # None: the input does not reach the outputs
        if got is None or want is None:
            assert all(g is None or not g.any() for g in (got, want))
            continue
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_tile_end_passes_gradcheck():
    inp = {n: x.detach().clone().requires_grad_() for n, x in _inputs(2).items()}
    assert torch.autograd.gradcheck(lambda *a: TileEnd.apply(*a), tuple(inp.values()))


def test_tile_end_of_a_memory_keeps_the_state_it_does_not_form():
    """``tile_end`` over every matrix: without ``b`` the given ``S`` comes back as it was."""
    x = _inputs(3)
    W = {"W1": x["W"], "W2": x["W"] * 2}
    S = {"W1": x["S"], "W2": x["S"] * 2}
    E, X = {"W1": x["E"], "W2": x["E"]}, {"W1": x["X"], "W2": x["X"]}
    newW, newS = tile_end(W, S, E, X, x["D"], x["c"], x["P"], x["a"], None)
    assert newS["W1"] is S["W1"] and newS["W2"] is S["W2"]
    for n in W:
        torch.testing.assert_close(newW[n], _formula(W[n], S[n], E[n], X[n], x["D"], x["c"],
                                                     x["P"], x["a"], None)[0])
