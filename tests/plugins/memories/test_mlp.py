"""The ``mlp`` and ``residual-mlp`` memories."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nlframe.registry import get_registry
from nlframe_plugins.memories.mlp import ACTIVATIONS, SECOND_DERIVATIVES, MLPMemory, ResidualMLPMemory

DT = torch.float64


def test_registered():
    reg = get_registry()
    assert reg.get("memory", "mlp") is MLPMemory
    assert reg.get("memory", "residual-mlp") is ResidualMLPMemory


def test_defaults_and_shapes():
    mem = MLPMemory(3, 5)
    assert mem.structure == "mlp" and mem.dim_h == 12 and mem.activation_name == "gelu"
    assert mem.param_shapes() == {"W1": (12, 3), "W2": (5, 12)}
    assert ResidualMLPMemory(4, 4, hidden=7).param_shapes() == {"W1": (7, 4), "W2": (4, 7)}


def test_init_is_seeded_scaled_normal_and_device_independent():
    a = MLPMemory(16, 8, hidden=64).init_params(dtype=DT)
    b = MLPMemory(16, 8, hidden=64).init_params(dtype=DT)
    c = MLPMemory(16, 8, hidden=64, seed=1).init_params(dtype=DT)
    assert torch.equal(a["W1"], b["W1"]) and not torch.equal(a["W1"], c["W1"])
    assert abs(a["W1"].std().item() - 1 / math.sqrt(16)) < 0.05
    assert abs(a["W2"].std().item() - 1 / math.sqrt(64)) < 0.03
    g = torch.Generator().manual_seed(5)
    d = MLPMemory(16, 8, hidden=64).init_params(generator=g, dtype=torch.float32)
    assert d["W1"].dtype == torch.float32 and not torch.equal(d["W1"].double(), a["W1"])


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_grad_matches_autograd(name):
    act, act_grad = ACTIVATIONS[name]
    z = torch.cat([torch.linspace(-4, 4, 41, dtype=DT), torch.zeros(1, dtype=DT)]).requires_grad_()
    (auto,) = torch.autograd.grad(act(z).sum(), z)
    assert torch.allclose(act_grad(z.detach()), auto, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_second_derivative_matches_autograd_of_the_first(name):
    act_grad, grad2 = ACTIVATIONS[name][1], SECOND_DERIVATIVES[name]
    z = torch.cat([torch.linspace(-4, 4, 41, dtype=DT), torch.tensor([0.0, 0.3], dtype=DT)])
    x = z.clone().requires_grad_()
    d1 = act_grad(x)  # relu's and identity's σ′ are piecewise constant: no graph, σ″ = 0
    auto = torch.autograd.grad(d1.sum(), x)[0] if d1.requires_grad else torch.zeros_like(z)
    assert torch.allclose(grad2(z), auto, rtol=1e-12, atol=1e-14)
    assert MLPMemory(2, 2, activation=name).activation_grad2 is grad2


def test_gelu_is_exact_gelu():
    z = torch.linspace(-5, 5, 101, dtype=DT)
    assert torch.allclose(ACTIVATIONS["gelu"][0](z), torch.nn.functional.gelu(z), atol=1e-15)


@given(lead=st.lists(st.integers(1, 3), max_size=2), n=st.integers(1, 4), d=st.integers(1, 4),
       hidden=st.integers(1, 5), act=st.sampled_from(sorted(ACTIVATIONS)),
       residual=st.booleans(), seed=st.integers(0, 100))
def test_batched_read_matches_formula(lead, n, d, hidden, act, residual, seed):
    gen = torch.Generator().manual_seed(seed)
    cls = ResidualMLPMemory if residual else MLPMemory
    mem = cls(d, d, hidden=hidden, activation=act)
    W1 = torch.randn(*lead, hidden, d, generator=gen, dtype=DT)
    W2 = torch.randn(*lead, d, hidden, generator=gen, dtype=DT)
    x = torch.randn(*lead, n, d, generator=gen, dtype=DT)
    y = mem.read({"W1": W1, "W2": W2}, x)
    h = ACTIVATIONS[act][0](torch.einsum("...hk,...nk->...nh", W1, x))
    expected = torch.einsum("...vh,...nh->...nv", W2, h) + (x if residual else 0)
    assert y.shape == (*lead, n, d)
    assert torch.allclose(y, expected, rtol=1e-12, atol=1e-13)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="dim_k == dim_v.*dim_k=3, dim_v=4"):
        ResidualMLPMemory(3, 4)
    with pytest.raises(ValueError, match="unknown activation 'swish'.*gelu"):
        MLPMemory(2, 2, activation="swish")
    with pytest.raises(ValueError, match="hidden must be a positive int, got 0"):
        MLPMemory(2, 2, hidden=0)
    with pytest.raises(TypeError, match="unknown option.*'width'"):
        MLPMemory(2, 2, width=3)
