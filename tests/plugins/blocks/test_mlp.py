"""The ``mlp`` (SwiGLU) block against its formula in float64."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nlframe.spec import SpecError, load_spec
from nlframe_plugins.blocks.mlp import MLP, default_hidden
from ._helpers import rel_err


@pytest.mark.parametrize("activation", ["silu", "gelu"])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_formula(activation, bias):
    torch.manual_seed(0)
    block = MLP(MLP.Config(hidden=20, activation=activation, bias=bias), 12).double()
    x = torch.randn(3, 7, 12, dtype=torch.float64)
    w = block.gate_up.weight
    gate, up = x @ w[:20].T, x @ w[20:].T
    if bias:
        gate, up = gate + block.gate_up.bias[:20], up + block.gate_up.bias[20:]
    act = gate / (1 + torch.exp(-gate)) if activation == "silu" else \
        0.5 * gate * (1 + torch.erf(gate / 2 ** 0.5))
    expected = (act * up) @ block.down.weight.T
    if bias:
        expected = expected + block.down.bias
    y, state = block(x, state="untouched")
    assert rel_err(y, expected) < 1e-13
    assert state == "untouched"


@given(dim=st.integers(1, 512), multiple_of=st.sampled_from([1, 8, 64]))
def test_default_hidden_is_eight_thirds_rounded_up(dim, multiple_of):
    h = default_hidden(dim, multiple_of)
    assert h % multiple_of == 0 and 8 * dim / 3 <= h < 8 * dim / 3 + multiple_of


def test_default_width_used():
    block = MLP(MLP.Config(), 48)
    assert block.hidden == 128 and block.gate_up.weight.shape == (256, 48)


@given(split=st.integers(0, 9))
def test_pieces_equal_one_pass(split):
    block = MLP(MLP.Config(hidden=8), 4).double()
    x = torch.randn(2, 9, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y, s = block(x[:, :split])
    y2, _ = block(x[:, split:], s)
    assert rel_err(torch.cat([y, y2], 1), block(x)[0]) < 1e-15


def test_errors():
    with pytest.raises(ValueError, match=r"mlp: x must have shape \(B, T, 4\), got \(2, 4\)"):
        MLP(MLP.Config(), 4)(torch.randn(2, 4))
    with pytest.raises(SpecError) as info:
        load_spec('[model]\ndim = 8\n[[model.blocks]]\ntype = "mlp"\nhidden = -1\nactivation = "swish"\n')
    assert info.value.errors == [
        ("model.blocks[0].hidden", "expected a positive int, got -1"),
        ("model.blocks[0].activation", "expected one of 'silu', 'gelu', got 'swish'"),
    ]
