"""Surprise objectives: closed-form gradients equal autograd; documented formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from nlframe.registry import get_registry
from nlframe_plugins.objectives import DotObjective, HuberObjective, L2Objective, LpObjective

DT = torch.float64
ALL = [("dot", {}), ("l2", {}), ("huber", {}), ("huber", {"delta": 0.25}), ("lp", {}),
       ("lp", {"p": 1.0}), ("lp", {"p": 1.5}), ("lp", {"p": 2.0}), ("lp", {"p": 4.5})]


def make(name, kw):
    return get_registry().get("objective", name)(**kw)


def test_registered():
    reg = get_registry()
    assert [reg.get("objective", n) for n in ("dot", "l2", "huber", "lp")] == \
        [DotObjective, L2Objective, HuberObjective, LpObjective]


@pytest.mark.parametrize("name,kw", ALL)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), seed=st.integers(0, 1000))
def test_grad_is_autograd_of_loss(name, kw, shape, seed):
    gen = torch.Generator().manual_seed(seed)
    obj = make(name, kw)
    pred = (2 * torch.randn(*shape, generator=gen, dtype=DT)).requires_grad_()
    target = 2 * torch.randn(*shape, generator=gen, dtype=DT)
    loss = obj.loss(pred, target)
    assert loss.shape == pred.shape[:-1]
    (auto,) = torch.autograd.grad(loss.sum(), pred)
    assert torch.allclose(obj.grad(pred.detach(), target), auto, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name,kw", ALL)
def test_grad_of_grad_is_finite_at_zero_residual(name, kw):
    """The surprise is differentiated again by the outer level: finite at r = 0."""
    obj = make(name, kw)
    pred = torch.tensor([[0.0, 1.0, -0.5]], dtype=DT, requires_grad=True)
    target = torch.tensor([[0.0, 1.0, 0.25]], dtype=DT)
    g = obj.grad(pred, target)
    if not g.requires_grad:  # dot: the surprise −v does not depend on the prediction
        assert name == "dot"
        return
    (gg,) = torch.autograd.grad(g.sum(), pred)
    assert torch.isfinite(gg).all()


@pytest.mark.parametrize("name", ["dot", "l2"])
def test_affine_grad_declaration(name):
    obj = make(name, {})
    a, b = obj.affine_grad
    pred, target = torch.randn(3, 4, dtype=DT), torch.randn(3, 4, dtype=DT)
    assert torch.allclose(obj.grad(pred, target), a * pred + b * target)
    assert make("huber", {}).affine_grad is None and make("lp", {}).affine_grad is None


def test_formulas():
    pred, target = torch.randn(5, 3, dtype=DT), torch.randn(5, 3, dtype=DT)
    assert torch.allclose(make("dot", {}).loss(pred, target), -(pred * target).sum(-1))
    assert torch.allclose(make("l2", {}).loss(pred, target), 0.5 * (pred - target).pow(2).sum(-1))
    for delta in (0.1, 1.0, 3.0):
        per_token = torch.stack([F.huber_loss(p, t, reduction="sum", delta=delta)
                                 for p, t in zip(pred, target)])
        assert torch.allclose(make("huber", {"delta": delta}).loss(pred, target), per_token)
    assert torch.allclose(make("lp", {"p": 2}).loss(pred, target),
                          make("l2", {}).loss(pred, target))
    assert torch.allclose(make("lp", {}).loss(pred, target),
                          (pred - target).abs().pow(3).sum(-1) / 3)


def test_option_validation():
    with pytest.raises(ValueError, match="delta must be a number > 0, got 0"):
        HuberObjective(delta=0)
    with pytest.raises(ValueError, match="delta must be a number > 0, got -1"):
        HuberObjective(delta=-1)
    with pytest.raises(ValueError, match="p must be a number >= 1, got 0.5"):
        LpObjective(p=0.5)
    with pytest.raises(TypeError, match="unknown option.*'q'"):
        LpObjective(q=2)
    with pytest.raises(TypeError, match="takes no options"):
        L2Objective(scale=2)
