"""Newton–Schulz: bit-identical to torch.optim.Muon's, batched = per matrix, orthogonalises."""

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.optim._muon import _zeropower_via_newtonschulz

from nlframe_plugins.optimizers.newton_schulz import (NS_COEFFICIENTS, newton_schulz,
                                                      orthogonalize)


@given(m=st.integers(1, 12), n=st.integers(1, 12), seed=st.integers(0, 1000),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_equals_torch_muon_bitwise(m, n, seed, dtype):
    g = torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    ours = newton_schulz(g)
    ref = _zeropower_via_newtonschulz(g, NS_COEFFICIENTS, 5, 1e-7)
    assert ours.dtype == ref.dtype == torch.bfloat16
    assert torch.equal(ours, ref)


@given(lead=st.lists(st.integers(1, 3), min_size=1, max_size=2), m=st.integers(1, 9),
       n=st.integers(1, 9), seed=st.integers(0, 1000),
       dtype=st.sampled_from(["bfloat16", None]))
def test_batched_equals_per_matrix(lead, m, n, seed, dtype):
    g = torch.randn(*lead, m, n, generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64)
    out = newton_schulz(g, dtype=dtype)
    flat_g, flat_o = g.reshape(-1, m, n), out.reshape(-1, m, n)
    for i in range(flat_g.shape[0]):
        one = newton_schulz(flat_g[i], dtype=dtype)
        if dtype is None:
            torch.testing.assert_close(flat_o[i], one, rtol=1e-12, atol=1e-13)
        else:
            assert torch.equal(flat_o[i], one)


def test_stacking_equal_shapes_changes_nothing():
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(6, 4, generator=gen, dtype=torch.float64) for _ in range(3)]
    xs.append(torch.randn(4, 6, generator=gen, dtype=torch.float64))
    out = orthogonalize(xs, NS_COEFFICIENTS, 5, 1e-7, "bfloat16")
    for x, o in zip(xs, out):
        assert o.dtype == torch.float64
        assert torch.equal(o, newton_schulz(x).to(torch.float64))
    out = orthogonalize(xs, NS_COEFFICIENTS, 5, 1e-7, None)  # stacked: baddbmm in float64
    for x, o in zip(xs, out):
        torch.testing.assert_close(o, newton_schulz(x, dtype=None), rtol=1e-13, atol=1e-14)


def test_orthogonalises_in_float64():
    """With enough steps of the classic cubic iteration (a, b, c) = (1.5, −0.5, 0) the result
    is U Vᵀ of the SVD (ground truth) — the same code path as the quintic default."""
    g = torch.randn(5, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = newton_schulz(g, (1.5, -0.5, 0.0), steps=60, dtype=None)
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    torch.testing.assert_close(out, u @ vh, rtol=1e-9, atol=1e-9)
    quintic = newton_schulz(g, dtype=None)
    s = torch.linalg.svdvals(quintic)
    assert ((s > 0.6) & (s < 1.3)).all(), s


def test_rejects_vectors():
    import pytest

    with pytest.raises(ValueError, match=r"\(3,\)"):
        newton_schulz(torch.zeros(3))
