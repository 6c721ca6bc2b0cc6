"""``ShortConv``: the causal depthwise convolution of HOPE and DeltaNet, against its
equation, on both of its paths (multiply-adds for a few tokens, ``conv1d`` otherwise)."""

import pytest
import torch
import torch.nn.functional as F

from nlframe_plugins.blocks import common
from nlframe_plugins.blocks.common import ShortConv


def _equation(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``y_t = SiLU(Σ_{j<w} c_j ⊙ x_{t−j})`` with zeros before the first token, a loop."""
    B, T, D = x.shape
    w = weight.shape[-1]
    y = torch.zeros_like(x)
    for t in range(T):
        for j in range(w):
            if t - j >= 0:
                y[:, t] += weight[:, 0, w - 1 - j] * x[:, t - j]
    return F.silu(y)


@pytest.mark.parametrize("T", [1, 3, 40])
def test_both_paths_follow_the_equation_and_stream(T):
    torch.manual_seed(0)
    conv = ShortConv(6, 4).double()
    with torch.no_grad():
        conv.weight.normal_()
    x = torch.randn(2, T, 6, dtype=torch.float64)
    expected = _equation(x, conv.weight)
    y, cache = conv(x, None)  # B·T = 2, 6: multiply-adds; 80: conv1d
    torch.testing.assert_close(y, expected)
    # token by token through the cache (the decoding path) gives the same outputs
    pieces, state = [], None
    for t in range(T):
        out, state = conv(x[:, t:t + 1], state)
        pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, 1), expected)
    torch.testing.assert_close(state, cache)


def test_the_paths_agree_where_they_meet(monkeypatch):
    """The same input through the multiply-adds and through ``conv1d``: outputs and
    gradients to the input and the taps."""
    torch.manual_seed(1)
    conv = ShortConv(8, 4)
    x = torch.randn(1, 5, 8, requires_grad=True)
    g = torch.randn(1, 5, 8)
    results = []
    for limit in (64, 0):
        monkeypatch.setattr(common, "SHORT_CONV_TAPS_MAX", limit)
        y = conv(x, None)[0]
        results.append((y, *torch.autograd.grad(y, (x, conv.weight), g)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
