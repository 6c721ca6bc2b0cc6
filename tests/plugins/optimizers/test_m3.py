"""m3: multi-scale momentum; reductions to its documented base rule (float64 ground truth)."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from nlframe_plugins.optimizers.newton_schulz import newton_schulz

from .helpers import randn, rule


def base_rule(W, grads, lr, b1, b2, eps, wd):
    """The documented base (alpha = 0): W ← W − γ(NS(m1)/(√(v/(1−β2ᵗ)) + ε) + λW), plain loops."""
    m1, v = torch.zeros_like(W), torch.zeros_like(W)
    for t, g in enumerate(grads, 1):
        m1 = b1 * m1 + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        d = newton_schulz(m1, dtype=None) / ((v / (1 - b2 ** t)).sqrt() + eps)
        W = W - lr * (d + wd * W)
    return W


@given(rows=st.integers(1, 5), cols=st.integers(1, 5), steps=st.integers(1, 7),
       b1=st.floats(0.0, 0.95), b2=st.floats(0.5, 0.999), wd=st.floats(0.0, 0.1),
       seed=st.integers(0, 10_000))
def test_slow_path_off_is_the_base_rule(rows, cols, steps, b1, b2, wd, seed):
    gen = torch.Generator().manual_seed(seed)
    W = randn(rows, cols, gen=gen)
    grads = [randn(rows, cols, gen=gen) for _ in range(steps)]
    r = rule("m3")
    p, st = {"W": W}, r.init({"W": W})
    for g in grads:
        p, st = r.update({"W": g}, st, p, lr=0.01, betas=(b1, b2, 0.9), alpha=0.0,
                         slow_every=1, weight_decay=wd)
    ref = base_rule(W, grads, 0.01, b1, b2, 1e-8, wd)
    torch.testing.assert_close(p["W"], ref, rtol=1e-10, atol=1e-12)


@given(steps=st.integers(1, 6), alpha=st.floats(0.0, 2.0), seed=st.integers(0, 10_000))
def test_every_step_slow_momentum_equal_to_fast_scales_the_base(steps, alpha, seed):
    """slow_every = 1, β3 = β1: m2 = m1, so the direction is (1 + α)·base."""
    gen = torch.Generator().manual_seed(seed)
    W = randn(3, 4, gen=gen)
    grads = [randn(3, 4, gen=gen) for _ in range(steps)]
    r = rule("m3")
    p, st = {"W": W}, r.init({"W": W})
    for g in grads:
        p, st = r.update({"W": g}, st, p, lr=0.01, betas=(0.8, 0.99, 0.8), alpha=alpha,
                         slow_every=1)
    ref = base_rule(W, grads, 0.01 * (1 + alpha), 0.8, 0.99, 1e-8, 0.0)
    torch.testing.assert_close(p["W"], ref, rtol=1e-10, atol=1e-12)


def test_slow_momentum_moves_only_when_its_chunk_closes():
    gen = torch.Generator().manual_seed(0)
    W = randn(3, 4, gen=gen)
    grads = [randn(3, 4, gen=gen) for _ in range(7)]
    r = rule("m3", slow_every=3)
    p, st = {"W": W}, r.init({"W": W})
    m2 = torch.zeros(3, 4, dtype=torch.float64)
    for t, g in enumerate(grads, 1):
        p, st = r.update({"W": g}, st, p, lr=0.01)
        s = st["m3"]
        if t % 3 == 0:
            chunk = sum(grads[t - 3:t]) / 3
            m2 = 0.95 * m2 + 0.05 * chunk
            assert not s["acc"]["W"].any()
            torch.testing.assert_close(s["o2"]["W"], newton_schulz(m2, dtype=None))
        else:
            torch.testing.assert_close(s["acc"]["W"], sum(grads[3 * (t // 3):t]))
        torch.testing.assert_close(s["m2"]["W"], m2)
