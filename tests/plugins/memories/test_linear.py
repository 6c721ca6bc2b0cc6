"""The ``linear`` memory ``M_W(x) = W x``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nlframe.registry import get_registry
from nlframe_plugins.memories.linear import LinearMemory


def test_registered():
    assert get_registry().get("memory", "linear") is LinearMemory


def test_shapes_and_zero_init():
    mem = LinearMemory(3, 5)
    assert mem.structure == "linear"
    assert mem.param_shapes() == {"W": (5, 3)}
    p = mem.init_params(dtype=torch.float64)
    assert p["W"].dtype == torch.float64 and p["W"].shape == (5, 3) and not p["W"].any()


@given(lead=st.lists(st.integers(1, 3), max_size=2), n=st.integers(1, 4), dk=st.integers(1, 4),
       dv=st.integers(1, 4), seed=st.integers(0, 100))
def test_batched_read_is_per_element_matvec(lead, n, dk, dv, seed):
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(*lead, dv, dk, generator=gen, dtype=torch.float64)
    x = torch.randn(*lead, n, dk, generator=gen, dtype=torch.float64)
    y = LinearMemory(dk, dv).read({"W": W}, x)
    assert y.shape == (*lead, n, dv)
    expected = torch.einsum("...vk,...nk->...nv", W, x)
    assert torch.allclose(y, expected, rtol=1e-12, atol=1e-14)


def test_rejects_options_and_bad_dims():
    with pytest.raises(TypeError, match="no options.*hidden"):
        LinearMemory(2, 2, hidden=3)
    with pytest.raises(ValueError, match="dim_k and dim_v"):
        LinearMemory(0, 2)
