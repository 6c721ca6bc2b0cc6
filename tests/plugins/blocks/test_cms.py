"""The ``cms`` block: level ℓ's fast parameters change exactly every C(ℓ) tokens,
the boundary write against per-token gradients in float64, the three variants,
streaming, both learning regimes and config errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nlframe.spec import MemoryRef, OptimizerRef, SpecError, load_spec
from nlframe_plugins.blocks.cms import CMS
from ._helpers import feed_in_pieces, rel_err


def make(dim=8, seed=0, **cfg) -> CMS:
    cfg.setdefault("memory", MemoryRef("mlp", {"hidden": 12}))
    cfg.setdefault("rule", OptimizerRef("sgd", {"lr": 0.1}))
    torch.manual_seed(seed)
    return CMS(CMS.Config(**cfg), dim).double()


def inputs(b=2, t=13, dim=8, seed=1) -> torch.Tensor:
    return torch.randn(b, t, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("variant", ["sequential", "nested", "independent"])
def test_levels_change_exactly_at_multiples_of_their_chunk_size(variant):
    sizes = (6, 3, 1) if variant == "nested" else (4, 3, 1)
    block = make(variant=variant, chunk_sizes=sizes)
    x = inputs(t=13)
    state, prev, changed = None, None, {i: [] for i in range(3)}
    for t in range(13):
        _, state = block(x[:, t:t + 1], state)
        now = block.fast_params(state)
        if prev is not None:
            for i in range(3):
                if any(not torch.equal(now[i][n], prev[i][n]) for n in now[i]):
                    changed[i].append(t + 1)  # tokens consumed
        prev = now
    for i, c in enumerate(sizes):
        assert changed[i] == [n for n in range(2, 14) if n % c == 0], (i, changed[i])


def test_boundary_write_equals_per_token_gradients():
    """θ_C = θ_0 − lr·(1/C) Σ_t ∇ℓ(M_θ0(k_t), v_t), per sequence (eq. 71 with sgd)."""
    C, lr = 4, 0.3
    block = make(chunk_sizes=(C,), rule=OptimizerRef("sgd", {"lr": lr}))
    x = inputs(t=C)
    _, state = block(x)
    got = block.fast_params(state)[0]
    u = block.norms[0](x)
    k, v = block.keys[0](u), block.values[0](u)
    mem = block.memories[0]
    for b in range(x.shape[0]):
        theta = {n: p[0].detach().clone().requires_grad_(True) for n, p in block.init[0].items()}
        total = {n: torch.zeros_like(p) for n, p in theta.items()}
        for t in range(C):
            loss = 0.5 * (mem.read(theta, k[b, t:t + 1]) - v[b, t:t + 1]).square().sum()
            for n, g in zip(theta, torch.autograd.grad(loss, list(theta.values()))):
                total[n] += g
        for n in theta:
            want = theta[n] - lr * total[n] / C
            assert rel_err(got[n][b, 0], want) < 1e-12, n


def test_nested_level_restarts_from_its_meta_learned_init():
    block = make(variant="nested", chunk_sizes=(4, 2))
    x = inputs(t=8)
    _, state = block(x[:, :4])
    settled = block._settle(1, state[1])[0]
    meta = settled.extra["meta"].params
    init = {n: p.expand_as(meta[n]) for n, p in block.init[1].items()}
    for n in meta:  # re-initialised to Φ after the parent's boundary, and Φ has moved
        assert torch.equal(settled.params[n], meta[n])
        assert rel_err(meta[n], init[n]) > 1e-6


@settings(max_examples=10)
@given(cuts=st.lists(st.integers(0, 13), max_size=4).map(sorted),
       variant=st.sampled_from(["sequential", "nested", "independent"]))
def test_random_splits_equal_one_pass(cuts, variant):
    block = make(variant=variant, chunk_sizes=(4, 2) if variant == "nested" else (3, 5))
    x = inputs()
    full, _ = block(x)
    assert rel_err(feed_in_pieces(block, x, cuts)[0], full) < 1e-10


def test_other_rules_and_objectives_write_levels():
    for rule in (OptimizerRef("dmgd", {"lr": 0.05}), OptimizerRef("adam", {"lr": 0.01}),
                 OptimizerRef("dgd", {"lr": 0.05})):
        block = make(chunk_sizes=(2,), rule=rule)
        x = inputs()
        y, state = block(x)
        y.square().sum().backward()
        assert torch.isfinite(y).all()
        init = block.init[0]["W1"].expand_as(state[0].params["W1"])
        assert rel_err(block.fast_params(state)[0]["W1"], init) > 1e-8, rule.type


def test_without_in_context_learning_it_is_a_chain_of_mlps():
    block = make(chunk_sizes=(2, 3), in_context=False, train_every=(1, 4))
    x = inputs()
    y, state = block(x)
    h = x
    for i in range(2):
        p = {n: q[0] for n, q in block.init[i].items()}
        u = block.norms[i](h)
        h = h + torch.nn.functional.gelu(u @ p["W1"].T) @ p["W2"].T
    assert rel_err(y, h) < 1e-12 and state == [None, None] and block.keys is None
    every = block.update_every()
    assert {n for n in every} == {n for n, _ in block.init[1].named_parameters(prefix="init.1")} | {
        n for n, _ in block.norms[1].named_parameters(prefix="norms.1")}
    assert set(every.values()) == {4}
    names = dict(block.named_parameters())
    assert all(n in names for n in every)


def test_independent_aggregates_levels_with_learned_weights():
    block = make(variant="independent", chunk_sizes=(2, 3), in_context=False)
    x = inputs()
    with torch.no_grad():
        block.agg.copy_(torch.tensor([0.0, 0.0]))
    assert rel_err(block(x)[0], x) < 1e-15  # y = x + Σ w_ℓ MLP_ℓ(x)
    y, _ = block(x)
    y.sum().backward()
    assert block.agg.grad is not None


def test_surprise_is_finite_and_positive():
    block = make(chunk_sizes=(4, 16))
    block(inputs())
    s = block.surprise()
    assert set(s) == {"level0", "level1"}
    assert all(torch.isfinite(v) and v > 0 for v in s.values())


def test_config_errors_name_the_field():
    def load(**cfg):
        return load_spec({"model": {"dim": 8, "blocks": [{"type": "cms", **cfg}]}})

    with pytest.raises(SpecError, match=r"chunk_sizes\[1\]: a nested level's chunk size must divide"):
        load(variant="nested", chunk_sizes=[4, 3])
    with pytest.raises(SpecError, match=r"train_every: expected one entry per level"):
        load(chunk_sizes=[4, 2], train_every=[1])
    with pytest.raises(SpecError, match=r"model.blocks\[0\].memory: .*dim_k == dim_v|memory"):
        load(memory={"type": "mlp", "hidden": 0})
    with pytest.raises(SpecError, match=r"chunk_sizes: .*positive int"):
        load(chunk_sizes=[4, 0])
    with pytest.raises(SpecError, match=r"grad_clip: the nested variant"):
        load(variant="nested", chunk_sizes=[4, 2], grad_clip=1.0)


@pytest.mark.parametrize("rule", [OptimizerRef("momentum", {"lr": 0.2}), OptimizerRef("sgd", {"lr": 0.2})])
def test_truncated_inner_gradient_stops_at_each_write_and_matches_reference(rule):
    """``inner_grad = "truncated"``: the same outputs as full; the outputs of chunk 2 get
    no gradient from the inputs of chunk 0 (only from chunk 1, through its write) — and the
    chunked backend's truncated gradients equal the reference loop's."""
    C = 4
    x = inputs(b=2, t=3 * C)
    grads, outs = {}, {}
    for mode, backend in (("full", "chunked"), ("truncated", "chunked"), ("truncated", "reference")):
        block = make(chunk_sizes=(C,), rule=rule, inner_grad=mode, backend=backend)
        xx = x.clone().requires_grad_(True)
        y, _ = block(xx)
        outs[mode, backend] = y.detach()
        (grads[mode, backend],) = torch.autograd.grad(y[:, 2 * C:].sin().sum(), xx)
    assert rel_err(outs["truncated", "chunked"], outs["full", "chunked"]) < 1e-14
    for mode in ("full", "truncated"):
        g = grads[mode, "chunked"]
        assert g[:, C:2 * C].abs().sum() > 0
        assert (g[:, :C].abs().sum() == 0) == (mode == "truncated"), mode
    assert rel_err(grads["truncated", "chunked"], grads["truncated", "reference"]) < 1e-10


def test_truncated_inner_gradient_is_refused_by_the_nested_variant():
    with pytest.raises(ValueError, match="inner_grad"):
        make(variant="nested", chunk_sizes=(4, 2), inner_grad="truncated")
