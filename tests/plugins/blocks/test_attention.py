"""The ``attention`` block against a float64 loop, and its streaming contract."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nlframe.spec import SpecError, load_spec
from nlframe_plugins.blocks.attention import Attention, rope
from ._helpers import feed_in_pieces, rel_err


def make(dim=16, seed=0, dtype=torch.float64, **cfg) -> Attention:
    torch.manual_seed(seed)
    return Attention(Attention.Config(**cfg), dim).to(dtype)


def naive_attention(block: Attention, x: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Explicit loops: per-pair 2×2 RoPE rotations and a per-query softmax."""
    b, t, _ = x.shape
    h, dh, half = block.heads, block.head_dim, block.head_dim // 2
    base, window = block.config.rope_base, block.config.window
    qkv = torch.nn.functional.linear(x, block.qkv.weight, block.qkv.bias).view(b, t, 3, h, dh)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, T, H, Dh)

    def rotate(z):
        out = z.clone()
        for p in range(t):
            for i in range(half):
                ang = (start + p) * base ** (-i / half)
                c, s = math.cos(ang), math.sin(ang)
                a, bb = z[:, p, :, i], z[:, p, :, i + half]
                out[:, p, :, i], out[:, p, :, i + half] = a * c - bb * s, bb * c + a * s
        return out

    q, k = rotate(q), rotate(k)
    y = torch.zeros(b, t, h, dh, dtype=x.dtype)
    for i in range(t):
        keys = [j for j in range(i + 1) if window is None or i - j < window]
        scores = torch.stack([(q[:, i] * k[:, j]).sum(-1) for j in keys], -1) / math.sqrt(dh)
        w = scores.softmax(-1)  # (B, H, S)
        y[:, i] = sum(w[..., n, None] * v[:, j] for n, j in enumerate(keys))
    return torch.nn.functional.linear(y.reshape(b, t, h * dh), block.out.weight, block.out.bias)


@pytest.mark.parametrize("cfg", [dict(heads=2), dict(heads=4, window=3), dict(heads=1, head_dim=6, bias=True),
                                 dict(heads=2, window=1, rope_base=100.0)])
def test_matches_float64_loop(cfg):
    block = make(**cfg)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    y, _ = block(x)
    assert rel_err(y, naive_attention(block, x)) < 1e-12


def test_float32_close_to_float64():
    block64 = make(heads=4, window=5)
    block32 = make(heads=4, window=5, dtype=torch.float32)
    x = torch.randn(2, 20, 16, dtype=torch.float64)
    y64, _ = block64(x)
    y32, _ = block32(x.float())
    assert rel_err(y32.double(), y64) < 1e-5


@given(q=st.lists(st.floats(-2, 2), min_size=4, max_size=4),
       k=st.lists(st.floats(-2, 2), min_size=4, max_size=4),
       p=st.integers(0, 500), s=st.integers(0, 500), shift=st.integers(0, 1000))
def test_rope_scores_depend_on_relative_position(q, k, p, s, shift):
    qt = torch.tensor(q, dtype=torch.float64).view(1, 1, 1, 4)
    kt = torch.tensor(k, dtype=torch.float64).view(1, 1, 1, 4)
    a = (rope(qt, p, 10000.0) * rope(kt, s, 10000.0)).sum()
    b = (rope(qt, p + shift, 10000.0) * rope(kt, s + shift, 10000.0)).sum()
    assert abs(float(a - b)) <= 1e-9 * (1 + abs(float(a)))
    # a rotation keeps norms
    assert torch.allclose(rope(qt, p, 10000.0).norm(), qt.norm())


@given(window=st.one_of(st.none(), st.integers(1, 6)),
       cuts=st.lists(st.integers(0, 14), max_size=5).map(sorted))
def test_streaming_in_pieces_equals_one_pass(window, cuts):
    block = make(heads=2, window=window)
    x = torch.randn(2, 14, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    full, _ = block(x)
    pieces, state = feed_in_pieces(block, x, cuts)
    assert rel_err(pieces, full) < 1e-12
    assert state["pos"] == 14


@pytest.mark.parametrize("window", [None, 1, 4])
def test_token_by_token_equals_one_pass(window):
    block = make(heads=4, window=window)
    x = torch.randn(3, 11, 16, dtype=torch.float64)
    full, _ = block(x)
    steps, state = feed_in_pieces(block, x, list(range(1, 11)))
    assert rel_err(steps, full) < 1e-12
    kept = 11 if window is None else window - 1
    assert state["k"].shape == (3, 4, kept, 4) and state["v"].shape == (3, 4, kept, 4)


def test_window_limits_the_receptive_field():
    block = make(heads=2, window=3)
    x = torch.randn(1, 10, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 4] += 1.0  # token 4 is visible to queries 4, 5, 6 only
    y, _ = block(x)
    y2, _ = block(x2)
    changed = (y - y2).abs().amax(dim=-1)[0] > 1e-12
    assert changed.tolist() == [False] * 4 + [True] * 3 + [False] * 3


def test_causal():
    block = make(heads=2)
    x = torch.randn(1, 8, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 5:] = torch.randn(1, 3, 16, dtype=torch.float64)
    assert torch.equal(block(x)[0][:, :5], block(x2)[0][:, :5])


def test_gradients_flow_through_cache():
    block = make(heads=2, dtype=torch.float32)
    x = torch.randn(2, 6, 16, requires_grad=True)
    _, state = block(x[:, :4])
    y, _ = block(x[:, 4:], state)
    y.sum().backward()
    assert x.grad[:, :4].abs().sum() > 0 and block.qkv.weight.grad.abs().sum() > 0


def test_empty_sequence_keeps_state():
    block = make(heads=2)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    _, state = block(x)
    y, state2 = block(x[:, :0], state)
    assert y.shape == (2, 0, 16) and state2["pos"] == 5
    assert torch.equal(state2["k"], state["k"])


def test_bad_input_and_state_errors():
    block = make(heads=2)
    with pytest.raises(ValueError, match=r"x must have shape \(B, T, 16\), got \(2, 5, 8\)"):
        block(torch.randn(2, 5, 8, dtype=torch.float64))
    _, state = block(torch.randn(2, 3, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="state is for batch 2, x has batch 1"):
        block(torch.randn(1, 3, 16, dtype=torch.float64), state)


def spec_with(block: str, dim: int = 64) -> str:
    return f"[model]\ndim = {dim}\n[[model.blocks]]\ntype = \"attention\"\n{block}\n"


def errors_of(text: str) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        load_spec(text)
    return info.value.errors


def test_config_errors_name_the_field():
    assert errors_of(spec_with("heads = 3")) == [
        ("model.blocks[0].heads", "3 heads do not divide dim 64; change heads or set head_dim")]
    assert errors_of(spec_with("heads = 3\nhead_dim = 7")) == [
        ("model.blocks[0].head_dim", "RoPE needs an even head dim, got 7 (dim 64, heads 3)")]
    assert errors_of(spec_with("window = 0"))[0][0] == "model.blocks[0].window"
    assert errors_of(spec_with("rope_base = 0.5"))[0][0] == "model.blocks[0].rope_base"
    with pytest.raises(ValueError, match="heads: 3 heads do not divide dim 64"):
        Attention(Attention.Config(heads=3), 64)
