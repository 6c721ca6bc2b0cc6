"""dmgd: an MLP momentum written by its own gradient step (NL eq. 23)."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from nlframe_plugins.optimizers.dmgd import mlp_read

from .helpers import randn, rule


@given(lead=st.lists(st.integers(1, 2), max_size=1), rows=st.integers(1, 4),
       cols=st.integers(1, 4), steps=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_memory_step_is_autograd_of_its_l2_objective(lead, rows, cols, steps, seed):
    """φ ← αφ − η∇φ ℓ with ℓ = 1/(2R) Σ‖M_φ(g_r) − g_r‖² (ground truth: autograd), then
    W ← W − γ·M_φ'(G)."""
    gen = torch.Generator().manual_seed(seed)
    W = randn(*lead, rows, cols, gen=gen)
    alpha, eta, lr = 0.9, 0.3, 0.05
    r = rule("dmgd")
    p, st = {"W": W}, r.init({"W": W})
    w1 = torch.eye(cols, dtype=W.dtype).expand(*lead, cols, cols).clone()
    w2 = torch.zeros(*lead, cols, cols, dtype=W.dtype)
    w = W.clone()
    for _ in range(steps):
        g = randn(*W.shape, gen=gen)
        p, st = r.update({"W": g}, st, p, lr=lr, momentum=alpha, inner_lr=eta)
        a1, a2 = w1.clone().requires_grad_(), w2.clone().requires_grad_()
        y, _ = mlp_read(a1, a2, g)
        loss = 0.5 * ((y - g) ** 2).sum() / rows
        d1, d2 = torch.autograd.grad(loss, (a1, a2))
        w1, w2 = alpha * w1 - eta * d1, alpha * w2 - eta * d2
        w = w - lr * mlp_read(w1, w2, g)[0]
        torch.testing.assert_close(st["memory"]["w1"]["W"], w1, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(st["memory"]["w2"]["W"], w2, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(p["W"], w, rtol=1e-12, atol=1e-13)


def test_memory_learns_a_repeated_gradient():
    """Fed one gradient over and over, the memory's output approaches it (ℓ → 0)."""
    gen = torch.Generator().manual_seed(0)
    g = randn(3, 4, gen=gen) * 0.3
    r = rule("dmgd", momentum=1.0, inner_lr=0.5)
    p, st = {"W": torch.zeros(3, 4, dtype=torch.float64)}, None
    st = r.init(p)
    errors = []
    for _ in range(200):
        before = p["W"]
        p, st = r.update({"W": g}, st, p, lr=1.0)
        errors.append(((before - p["W"]) - g).norm().item())
    assert errors[-1] < 0.05 * errors[0]
