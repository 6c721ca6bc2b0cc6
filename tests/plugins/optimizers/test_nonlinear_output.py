"""nonlinear-output: W ← W − γ(σ(m) + λW); with σ = Newton–Schulz it is Muon."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from .helpers import randn, rule


@given(m=st.integers(1, 6), extra=st.integers(0, 4), lead=st.lists(st.integers(1, 2), max_size=2),
       steps=st.integers(1, 6), nesterov=st.booleans(), mu=st.floats(0.0, 0.99),
       wd=st.floats(0.0, 0.2), seed=st.integers(0, 10_000))
def test_equals_muon_when_the_shape_ratio_is_one(m, extra, lead, steps, nesterov, mu, wd, seed):
    """NL eq. 24 with σ = NS and linear momentum ≡ Muon (A ≤ B: Muon's lr ratio is 1)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (*lead, m, m + extra)
    W = {"W": randn(*shape, gen=gen)}
    hyper = dict(lr=0.05, momentum=mu, nesterov=nesterov, weight_decay=wd)
    a, b = rule("nonlinear-output", ns_dtype="bfloat16"), rule("muon")
    pa, sa = dict(W), a.init(W)
    pb, sb = dict(W), b.init(W)
    for _ in range(steps):
        g = {"W": randn(*shape, gen=gen)}
        pa, sa = a.update(g, sa, pa, **hyper)
        pb, sb = b.update(g, sb, pb, **hyper)
        assert torch.equal(pa["W"], pb["W"])


def test_other_output_maps():
    gen = torch.Generator().manual_seed(0)
    W, g = randn(3, 4, gen=gen), randn(3, 4, gen=gen)
    for out, f in (("identity", lambda x: x), ("sign", torch.sign), ("tanh", torch.tanh)):
        r = rule("nonlinear-output", output=out, momentum=0.5, nesterov=False)
        new, st = r.update({"W": g}, r.init({"W": W}), {"W": W}, lr=0.1)
        m = 0.5 * g  # lerp(0, g, 1 − μ)
        torch.testing.assert_close(st["ema_momentum"]["momentum_buffer"]["W"], m)
        torch.testing.assert_close(new["W"], W - 0.1 * f(m), rtol=1e-14, atol=1e-15)
