"""The ``self-mod-titans`` block: the projection memories' chunk write against a
per-token float64 computation, real self-modification, streaming, surprise."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nlframe.spec import MemoryRef, OptimizerRef, SpecError, load_spec
from nlframe_plugins.blocks.common import l2norm
from nlframe_plugins.blocks.self_mod_titans import SelfModTitans
from ._helpers import feed_in_pieces, rel_err


def make(dim=16, seed=0, **cfg) -> SelfModTitans:
    cfg.setdefault("heads", 2)
    cfg.setdefault("chunk_size", 3)
    cfg.setdefault("proj_chunk_size", 4)
    cfg.setdefault("memory", MemoryRef("residual-mlp", {"hidden": 8}))
    cfg.setdefault("proj_memory", MemoryRef("residual-mlp", {"hidden": 12}))
    cfg.setdefault("proj_lr", 0.5)
    torch.manual_seed(seed)
    return SelfModTitans(SelfModTitans.Config(**cfg), dim).double()


def inputs(b=2, t=11, dim=16, seed=1) -> torch.Tensor:
    return torch.randn(b, t, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_projection_write_equals_the_per_token_dgd_step():
    """One chunk of M_□ with dgd and retention (NL eq. 88 over the chunk)::

        W ← W − Σ_t w_t (∇ℓ_t(W) + W x_t x_tᵀ) − (1 − Π_t r_t) W,   ℓ_t = ½‖M_W(k_t) − M_W0(v_t)‖²
    """
    C = 4
    block = make(proj_chunk_size=C)
    _, state = block(inputs(t=C))
    pend, W0 = state["proj"].pending, state["proj"].params
    got = block.fast_params(state)
    mem = block.proj_memory
    for b in range(2):
        for j in range(len(block.names)):
            theta = {n: W0[n][b, j].detach().clone().requires_grad_(True) for n in W0}
            grad = {n: torch.zeros_like(p) for n, p in theta.items()}
            xtx = {n: 0.0 for n in theta}
            keep = 1.0
            for t in range(C):
                k, st = pend["k"][b, 0, t:t + 1], pend["self_target"][b, 0, t:t + 1]
                w, r = pend["weight"][b, j, t], pend["retention"][b, j, t]
                target = mem.read({n: p.detach() for n, p in theta.items()}, st)  # v̂ = M_W0(v_t)
                loss = 0.5 * (mem.read(theta, k) - target).square().sum()
                for n, g in zip(theta, torch.autograd.grad(loss, list(theta.values()))):
                    grad[n] += w * g
                inputs_ = {"W1": k[0], "W2": torch.nn.functional.gelu(k[0] @ theta["W1"].T)}
                for n in theta:
                    xtx[n] = xtx[n] + w * torch.outer(inputs_[n], inputs_[n]).detach()
                keep = keep * r
            for n, p in theta.items():
                want = p - (grad[n] + p @ xtx[n]) - (1 - keep) * p
                assert rel_err(got[n][b, j], want) < 1e-10, (b, j, n)


def test_projection_memories_really_modify_themselves():
    block = make(conv_size=0)
    x = inputs(t=8)
    _, state_a = block(x[:, :4])
    _, state_b = block(inputs(t=4, seed=7))
    init = {n: p.expand_as(state_a["proj"].params[n]) for n, p in block.proj_init.items()}
    pa, pb = block.fast_params(state_a), block.fast_params(state_b)
    for n in pa:  # the fast parameters moved, and how depends on the input
        assert rel_err(pa[n], init[n]) > 1e-4 and rel_err(pa[n], pb[n]) > 1e-4
    # the same token after two different prefixes gets different keys and values
    z = l2norm(x[:, None, 5:6])
    read_a = block.proj_memory.read(pa, z)  # (B, P, 1, dim): k, v, e, a
    read_b = block.proj_memory.read(pb, z)
    for i, name in enumerate(("k", "v")):
        assert rel_err(read_a[:, i], read_b[:, i]) > 1e-4, name


@settings(max_examples=10)
@given(cuts=st.lists(st.integers(0, 11), max_size=3).map(sorted),
       sizes=st.sampled_from([(3, 4), (2, 2), (5, 3)]), adaptive_q=st.booleans())
def test_random_splits_equal_one_pass(cuts, sizes, adaptive_q):
    block = make(chunk_size=sizes[0], proj_chunk_size=sizes[1], adaptive_q=adaptive_q)
    x = inputs()
    full, _ = block(x)
    assert rel_err(feed_in_pieces(block, x, cuts)[0], full) < 1e-10


def test_token_by_token_with_another_rule_and_gradients():
    block = make(rule=OptimizerRef("sgd", {"lr": 1.0}), self_values=False, momentum=0.5)
    x = inputs().requires_grad_(True)
    full, _ = block(x)
    state, steps = None, []
    for t in range(x.shape[1]):
        y, state = block(x[:, t:t + 1], state)
        steps.append(y)
    assert rel_err(torch.cat(steps, 1), full) < 1e-10
    full.square().sum().backward()
    for name, p in block.named_parameters():  # every memory's initial state is learned
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert block.proj_init["W1"].grad.abs().sum() > 0 and block.memory_init["W1"].grad.abs().sum() > 0


def test_surprise_of_every_memory():
    block = make()
    block(inputs())
    s = block.surprise()
    assert set(s) == {"proj_k", "proj_v", "proj_eta", "proj_alpha", "memory"}
    assert all(torch.isfinite(v) and v > 0 for v in s.values())


def test_config_errors():
    def load(**cfg):
        return load_spec({"model": {"dim": 16, "blocks": [{"type": "self-mod-titans", **cfg}]}})

    with pytest.raises(SpecError, match=r"head_dim: heads × head_dim must equal dim"):
        load(heads=2, head_dim=4)
    with pytest.raises(SpecError, match=r"model.blocks\[0\].rule.type: unknown optimizer 'dgdd'"):
        load(rule={"type": "dgdd"})
    with pytest.raises(SpecError, match=r"proj_memory: .*dim_k == dim_v|proj_memory"):
        load(proj_memory={"type": "residual-mlp", "hidden": -1})
