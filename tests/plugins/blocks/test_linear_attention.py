"""The ``linear-attention`` block against causal linear attention written out, and
its streaming contract."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nlframe.spec import SpecError, load_spec
from nlframe_plugins.blocks.common import l2norm
from nlframe_plugins.blocks.linear_attention import LinearAttention
from ._helpers import feed_in_pieces, rel_err


def make(dim=16, seed=0, **cfg) -> LinearAttention:
    torch.manual_seed(seed)
    return LinearAttention(LinearAttention.Config(**cfg), dim).double()


def inputs(b=2, t=11, dim=16, seed=1) -> torch.Tensor:
    return torch.randn(b, t, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def naive(block: LinearAttention, x: torch.Tensor) -> torch.Tensor:
    """``y_t = W_o norm(Σ_{s≤t} θ_s (k_s·q_t) v_s)`` with a loop over queries."""
    b, t, _ = x.shape
    h = block.heads
    q, k, v = (z.view(b, t, h, -1).transpose(1, 2) for z in block.qkv(x).chunk(3, -1))
    if block.config.qk_norm:
        q, k = l2norm(q), l2norm(k)
    theta = block.lr(x) if block.lr is not None else torch.ones(b, h, t, dtype=x.dtype)
    ys = []
    for i in range(t):
        scores = (k[:, :, : i + 1] * q[:, :, i : i + 1]).sum(-1) * theta[:, :, : i + 1]  # (B, H, i+1)
        ys.append((scores[..., None] * v[:, :, : i + 1]).sum(2))
    y = torch.stack(ys, 2)  # (B, H, T, Dh)
    return block.out(block.out_norm(y).transpose(1, 2).reshape(b, t, -1))


@pytest.mark.parametrize("cfg", [{}, {"learned_lr": True}, {"qk_norm": False, "chunk_size": 3}])
def test_equals_causal_linear_attention(cfg):
    block = make(**cfg)
    x = inputs()
    y, _ = block(x)
    assert rel_err(y, naive(block, x)) < 1e-12


def test_chunk_size_does_not_change_results():
    x = inputs()
    ys = [make(chunk_size=c)(x)[0] for c in (1, 4, 64)]
    assert rel_err(ys[1], ys[0]) < 1e-12 and rel_err(ys[2], ys[0]) < 1e-12


@given(cuts=st.lists(st.integers(0, 11), max_size=4).map(sorted))
def test_random_splits_equal_one_pass(cuts):
    block = make(conv_size=3, learned_lr=True, chunk_size=4)
    x = inputs()
    full, _ = block(x)
    assert rel_err(feed_in_pieces(block, x, cuts)[0], full) < 1e-12


def test_token_by_token_and_gradients_reach_every_parameter():
    block = make(conv_size=3, learned_lr=True)
    x = inputs()
    full, _ = block(x)
    state, steps = None, []
    for t in range(x.shape[1]):
        y, state = block(x[:, t:t + 1], state)
        steps.append(y)
    assert rel_err(torch.cat(steps, 1), full) < 1e-12
    full.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())


def test_surprise_is_the_value_norm():
    """Dot objective: ∂ℓ/∂pred = −v, so the surprise is mean ‖v_t‖."""
    block = make()
    x = inputs()
    block(x)
    b, t, _ = x.shape
    v = block.qkv(x).chunk(3, -1)[2].view(b, t, block.heads, -1)
    s = block.surprise()["memory"]
    assert torch.isfinite(s) and s > 0
    assert abs(float(s) - float(v.detach().norm(dim=-1).mean())) < 1e-12


def test_bad_config_names_the_field():
    with pytest.raises(SpecError, match=r"model.blocks\[0\].heads: 3 heads do not divide dim 16"):
        load_spec({"model": {"dim": 16, "blocks": [{"type": "linear-attention", "heads": 3}]}})
    with pytest.raises(ValueError, match="x must have shape"):
        make()(torch.zeros(2, 3, 5, dtype=torch.float64))
