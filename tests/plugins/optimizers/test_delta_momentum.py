"""delta-momentum: m ← m(αI − βĜᵀĜ) − ηP(∇L), W ← W + m (NL eqs. 21–22)."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from .helpers import randn, rule


def reference(W, grads, lr, alpha, beta, normalize):
    """Explicit D×D matrices, identity preconditioner, one (…, R, D) matrix at a time."""
    m = torch.zeros_like(W)
    for g in grads:
        G = g / g.norm() if normalize else g
        D = W.shape[-1]
        m = m @ (alpha * torch.eye(D, dtype=W.dtype) - beta * G.T @ G) - lr * g
        W = W + m
    return W


@given(rows=st.integers(1, 4), cols=st.integers(1, 4), steps=st.integers(1, 5),
       normalize=st.booleans(), seed=st.integers(0, 10_000))
def test_equals_explicit_matrix_form(rows, cols, steps, normalize, seed):
    gen = torch.Generator().manual_seed(seed)
    W = randn(rows, cols, gen=gen)
    grads = [randn(rows, cols, gen=gen) * 0.5 for _ in range(steps)]
    r = rule("delta-momentum", preconditioner="identity", normalize=normalize)
    p, st = {"W": W}, r.init({"W": W})
    for g in grads:
        p, st = r.update({"W": g}, st, p, lr=0.1, momentum=0.9, delta_rate=0.5)
    torch.testing.assert_close(p["W"], reference(W, grads, 0.1, 0.9, 0.5, normalize),
                               rtol=1e-11, atol=1e-12)


def test_vectors_use_the_outer_product():
    gen = torch.Generator().manual_seed(0)
    w, g1, g2 = randn(5, gen=gen), randn(5, gen=gen), randn(5, gen=gen)
    r = rule("delta-momentum", preconditioner="identity", normalize=False)
    p, st = r.update({"b": g1}, r.init({"b": w}), {"b": w}, lr=0.1, momentum=0.9)
    p, st = r.update({"b": g2}, st, p, lr=0.1, momentum=0.9)
    m1 = -0.1 * g1
    m2 = m1 @ (0.9 * torch.eye(5, dtype=w.dtype) - torch.outer(g2, g2)) - 0.1 * g2
    torch.testing.assert_close(p["b"], w + m1 + m2, rtol=1e-12, atol=1e-13)


def test_zero_delta_rate_is_preconditioned_momentum():
    gen = torch.Generator().manual_seed(1)
    W = randn(2, 3, 4, gen=gen)
    a, b = rule("delta-momentum", delta_rate=0.0), rule("preconditioned-momentum")
    pa, sa = {"W": W}, a.init({"W": W})
    pb, sb = {"W": W}, b.init({"W": W})
    for _ in range(4):
        g = {"W": randn(2, 3, 4, gen=gen)}
        pa, sa = a.update(g, sa, pa)
        pb, sb = b.update(g, sb, pb)
    torch.testing.assert_close(pa["W"], pb["W"], rtol=1e-13, atol=1e-15)
