"""preconditioned-momentum: m ← αm − ηP(∇L), W ← W + m (NL eq. 20)."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from nlframe_plugins.optimizers.newton_schulz import newton_schulz

from .helpers import randn, rule


@given(lead=st.lists(st.integers(1, 3), max_size=2), steps=st.integers(1, 6),
       seed=st.integers(0, 10_000))
def test_identity_preconditioner_is_the_scan_momentum_rule(lead, steps, seed):
    """With P = I and no decay: the scan's S ← ηS − θg, W ← W + S (tensor hyper per element)."""
    gen = torch.Generator().manual_seed(seed)
    W = randn(*lead, 3, 2, gen=gen)
    lr = torch.rand(*lead, generator=gen, dtype=torch.float64) if lead else 0.3
    mom = torch.rand(*lead, generator=gen, dtype=torch.float64) if lead else 0.7
    a, b = rule("preconditioned-momentum", preconditioner="identity"), rule("momentum")
    pa, sa = {"W": W}, a.init({"W": W})
    pb, sb = {"W": W}, b.init({"W": W})
    for _ in range(steps):
        g = {"W": randn(*W.shape, gen=gen)}
        pa, sa = a.update(g, sa, pa, lr=lr, momentum=mom)
        pb, sb = b.update(g, sb, pb, lr=lr, momentum=mom, decay=0.0)
        torch.testing.assert_close(pa["W"], pb["W"], rtol=1e-13, atol=1e-14)


def test_adam_and_newton_schulz_preconditioners():
    gen = torch.Generator().manual_seed(0)
    W = randn(4, 3, gen=gen)
    grads = [randn(4, 3, gen=gen) for _ in range(4)]
    for kind in ("adam", "newton-schulz"):
        r = rule("preconditioned-momentum", preconditioner=kind)
        p, st = {"W": W}, r.init({"W": W})
        w, m, v = W.clone(), torch.zeros_like(W), torch.zeros_like(W)
        for t, g in enumerate(grads, 1):
            p, st = r.update({"W": g}, st, p, lr=0.1, momentum=0.8)
            if kind == "adam":
                v = 0.999 * v + 0.001 * g * g
                pg = g / ((v / (1 - 0.999 ** t)).sqrt() + 1e-8)
            else:
                pg = newton_schulz(g, dtype=None)
            m = 0.8 * m - 0.1 * pg
            w = w + m
        torch.testing.assert_close(p["W"], w, rtol=1e-12, atol=1e-13)
