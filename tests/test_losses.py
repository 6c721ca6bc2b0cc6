"""token_nll against −log softmax written out in float64, and F.cross_entropy."""

import math

import pytest
import torch
import torch.nn.functional as F

import nlframe.losses as losses
from nlframe.losses import token_nll


def _nll_loop(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """ℓ_i = log Σ_v exp z_iv − z_i,t_i, one row at a time from the definition."""
    rows = []
    for i in range(z.shape[0]):
        row = [float(x) for x in z[i]]
        top = max(row)
        rows.append(top + math.log(sum(math.exp(x - top) for x in row)) - row[int(t[i])])
    return torch.tensor(rows, dtype=torch.float64)


@pytest.fixture(params=[1 << 20, 25, 1], ids=["one-block", "25-value-blocks", "one-row-blocks"])
def block(request, monkeypatch):
    """Row blocks of the CPU path: all rows at once, blocks that cut the rows unevenly
    (⌊25 / V⌋ rows), and one row at a time."""
    monkeypatch.setattr(losses, "_CPU_BLOCK_ELEMENTS", request.param)


@pytest.mark.parametrize("n,v", [(1, 1), (5, 3), (13, 40)])
def test_token_nll_matches_the_equation_and_its_gradient(block, n, v):
    g = torch.Generator().manual_seed(n * 100 + v)
    z = (torch.randn(n, v, generator=g, dtype=torch.float64) * 3).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g)
    w = torch.randn(n, generator=g, dtype=torch.float64)
    out = token_nll(z, t)
    torch.testing.assert_close(out.detach(), _nll_loop(z.detach(), t), rtol=1e-12, atol=1e-12)
    (out * w).sum().backward()
    p = torch.softmax(z.detach(), 1)
    expected = w[:, None] * (p - F.one_hot(t, v).to(p))
    torch.testing.assert_close(z.grad, expected, rtol=1e-12, atol=1e-12)


def test_token_nll_gradcheck_and_cross_entropy(block):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(9, 11, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 11, (9,), generator=g)
    assert torch.autograd.gradcheck(lambda x: token_nll(x, t), (z,))
    z32 = z.detach().float().requires_grad_()
    ref = z.detach().float().requires_grad_()
    token_nll(z32, t).sum().backward()
    F.cross_entropy(ref, t, reduction="sum").backward()
    torch.testing.assert_close(token_nll(z32, t), F.cross_entropy(ref, t, reduction="none"))
    torch.testing.assert_close(z32.grad, ref.grad)


def test_token_nll_takes_strided_logits():
    z = torch.randn(6, 8, dtype=torch.float64)[:, ::2].requires_grad_()
    t = torch.tensor([0, 1, 2, 3, 0, 1])
    token_nll(z, t).sum().backward()
    ref = z.detach().clone().requires_grad_()
    F.cross_entropy(ref, t, reduction="sum").backward()
    torch.testing.assert_close(z.grad, ref.grad)


def test_token_nll_bad_input_errors():
    with pytest.raises(ValueError, match="logits"):
        token_nll(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer targets"):
        token_nll(torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(RuntimeError, match="out of bounds"):
        token_nll(torch.zeros(2, 3), torch.tensor([0, 3]))
