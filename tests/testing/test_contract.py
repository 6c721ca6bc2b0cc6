"""The kit's contract loop against closed forms of the scan contract (float64)."""

import pytest
import torch

from nlframe.testing import assert_close, build_request, contract_scan
from nlframe.testing.assertions import seeded_state


def _qkv(B=2, H=1, T=6, Dk=3, Dv=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.nn.functional.normalize(torch.randn(B, H, T, Dk, generator=g, dtype=torch.float64), dim=-1)
            for _ in range(2))
    return q, k, torch.randn(B, H, T, Dv, generator=g, dtype=torch.float64), g


def test_chunk_one_is_the_gated_delta_rule(kit_plugins):
    """``W_t = W_{t−1}((1−α_t)I − θ_t k_t k_tᵀ) + θ_t v_t k_tᵀ`` (docs/concepts.md, η = 0)."""
    q, k, v, g = _qkv()
    lr = 0.5 * torch.rand(2, 1, 6, generator=g, dtype=torch.float64)
    decay = 0.2 * torch.rand(2, 1, 6, generator=g, dtype=torch.float64)
    state = seeded_state(q, v, memory="kit-linear")
    y, st = contract_scan(build_request(q, k, v, memory="kit-linear", objective="kit-l2",
                                        chunk_size=1, state=state, lr=lr, decay=decay))
    W = state.params["W"].clone()                                # (B, H, Dv, Dk)
    eye = torch.eye(3, dtype=torch.float64)
    for t in range(6):
        kt, vt, a, th = k[:, :, t], v[:, :, t], decay[:, :, t, None, None], lr[:, :, t, None, None]
        W = W @ ((1 - a) * eye - th * kt[..., :, None] * kt[..., None, :]) + th * vt[..., :, None] * kt[..., None, :]
        assert_close(y[:, :, t], (W @ q[:, :, t, :, None])[..., 0], rtol=1e-12, name=f"y_{t}")
    assert_close(st.params["W"], W, rtol=1e-12, name="W_T")
    assert (st.position, st.step) == (0, 6)


def test_one_chunk_takes_every_gradient_at_its_start(kit_plugins):
    """``C ≥ T``, ``α = η = 0``: ``W_t = W_0 − Σ_{i≤t} θ_i (W_0 k_i − v_i) k_iᵀ``."""
    q, k, v, _ = _qkv(T=4)
    state = seeded_state(q, v, memory="kit-linear")
    y, st = contract_scan(build_request(q, k, v, memory="kit-linear", objective="kit-l2",
                                        chunk_size=5, state=state, lr=0.3))
    W0 = state.params["W"]
    err = W0[:, :, None] @ k[..., None] - v[..., None]                 # (B, H, T, Dv, 1)
    W = W0[:, :, None] - 0.3 * torch.cumsum(err * k[..., None, :], dim=2)  # (B, H, T, Dv, Dk)
    assert_close(y, (W @ q[..., None])[..., 0], rtol=1e-12, name="y")
    assert st.position == 4 and st.step == 4
    assert_close(st.chunk_params, state.params, rtol=0.0, name="chunk_params")


def test_momentum_accumulates_surprise(kit_plugins):
    """``S_t = η S_{t−1} − θ g_t``, ``W_t = W_{t−1} + S_t`` with gradients at ``W_{t−1}`` (C = 1)."""
    q, k, v, _ = _qkv(T=5)
    state = seeded_state(q, v, memory="kit-linear")
    y, st = contract_scan(build_request(q, k, v, memory="kit-linear", objective="kit-l2",
                                        chunk_size=1, state=state, lr=0.2, momentum=0.7))
    W, S = state.params["W"].clone(), torch.zeros_like(state.params["W"])
    for t in range(5):
        grad = ((W @ k[:, :, t, :, None])[..., 0] - v[:, :, t])[..., None] * k[:, :, t, None, :]
        S = 0.7 * S - 0.2 * grad
        W = W + S
    assert_close(st.params["W"], W, rtol=1e-12, name="W_T")
    assert_close(st.opt_state["momentum"]["W"], S, rtol=1e-12, name="S_T")


def test_build_request_routes_gates_to_the_rule(kit_plugins):
    q, k, v, _ = _qkv(T=3)
    req = build_request(q, k, v, memory="kit-linear", objective="kit-l2", chunk_size=2, lr=0.1,
                        decay=torch.zeros(2, 1, 3, dtype=torch.float64))
    assert set(req.hyper) == {"lr", "decay"} and req.hyper["lr"].shape == (2, 1, 3)
    assert req.names == {"memory": "kit-linear", "objective": "kit-l2", "optimizer": "momentum"}
    with pytest.raises(TypeError, match="unknown gate"):
        build_request(q, k, v, memory="kit-linear", objective="kit-l2", beta=0.1)
