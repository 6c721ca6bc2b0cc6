"""The ``deltanet`` block against the (gated) delta rule written token by token in
float64, and its streaming contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from nlframe.spec import SpecError, load_spec
from nlframe_plugins.blocks.common import l2norm
from nlframe_plugins.blocks.deltanet import DeltaNet
from ._helpers import feed_in_pieces, rel_err


def make(dim=16, seed=0, **cfg) -> DeltaNet:
    torch.manual_seed(seed)
    return DeltaNet(DeltaNet.Config(**cfg), dim).double()


def inputs(b=2, t=11, dim=16, seed=1) -> torch.Tensor:
    return torch.randn(b, t, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def naive(block: DeltaNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``W_t = W_{t−1}((1−α_t)I − θ_t k kᵀ) + θ_t v kᵀ``, ``y_t = W_t q_t``; also the
    write-time errors ``‖W_{t−1} k_t − v_t‖``."""
    b, t, _ = x.shape
    h = block.heads
    qkv = block.qkv(x)
    if block.conv is not None:
        qkv, _ = block.conv(qkv, None)
    q, k, v = (z.view(b, t, h, -1).transpose(1, 2) for z in qkv.chunk(3, -1))
    q, k = l2norm(q), l2norm(k)
    theta = block.lr(x)
    alpha = (-torch.expm1(-F.softplus(block.decay(x))).transpose(1, 2) if block.decay is not None
             else torch.zeros_like(theta))
    W = x.new_zeros(b, h, block.head_dim, block.head_dim)
    eye = torch.eye(block.head_dim, dtype=x.dtype)
    ys, errs = [], []
    for i in range(t):
        kk, vv = k[:, :, i, :, None], v[:, :, i, :, None]  # (B, H, D, 1)
        errs.append((W @ kk - vv).squeeze(-1).norm(dim=-1))
        a, th = alpha[:, :, i, None, None], theta[:, :, i, None, None]
        W = W @ ((1 - a) * eye - th * kk @ kk.mT) + th * vv @ kk.mT
        ys.append((W @ q[:, :, i, :, None]).squeeze(-1))
    y = torch.stack(ys, 2)
    return block.out(block.out_norm(y).transpose(1, 2).reshape(b, t, -1)), torch.stack(errs, 2)


@pytest.mark.parametrize("cfg", [{}, {"gate": True, "retention": 0.8}, {"conv_size": 0, "heads": 2}])
def test_equals_the_delta_rule(cfg):
    block = make(**cfg)
    x = inputs()
    y, _ = block(x)
    want, errs = naive(block, x)
    assert rel_err(y, want) < 1e-10
    assert abs(float(block.surprise()["memory"]) - float(errs.detach().mean())) < 1e-10


@given(cuts=st.lists(st.integers(0, 11), max_size=4).map(sorted))
def test_random_splits_equal_one_pass(cuts):
    block = make(gate=True)
    x = inputs()
    full, _ = block(x)
    assert rel_err(feed_in_pieces(block, x, cuts)[0], full) < 1e-10


def test_token_by_token_and_gradients():
    block = make(gate=True)
    x = inputs().requires_grad_(True)
    full, _ = block(x)
    state, steps = None, []
    for t in range(x.shape[1]):
        y, state = block(x[:, t:t + 1], state)
        steps.append(y)
    assert rel_err(torch.cat(steps, 1), full) < 1e-10
    full.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())
    s = block.surprise()["memory"]
    assert torch.isfinite(s) and s > 0


def test_bad_config_names_the_field():
    with pytest.raises(SpecError, match=r"model.blocks\[0\].retention: expected a number in"):
        load_spec({"model": {"dim": 16, "blocks": [{"type": "deltanet", "retention": 1.5}]}})
    with pytest.raises(SpecError, match=r"model.blocks\[0\].conv_size: a convolution needs"):
        load_spec({"model": {"dim": 16, "blocks": [{"type": "deltanet", "conv_size": 1}]}})
