"""Properties every built-in backend must have (docs/concepts.md): closed forms,
streaming over any split, batch independence, gradcheck."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import nlframe

from .scan_cases import DT, assert_close, gates, qkv, random_state, tile

BACKENDS = ["reference", "chunked"]


# -- closed forms ------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk", [1, 2, 5, 64])
def test_dot_without_decay_is_causal_linear_attention(backend, chunk):
    """dot: g_t = −v_t k_tᵀ does not depend on W, so for every chunk size (α = η = 0)
    W_t = Σ_{s≤t} θ_s v_s k_sᵀ and y_t = Σ_{s≤t} θ_s (q_t·k_s) v_s."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = qkv(gen, 2, 3, 23, 4, 5)
    lr = torch.rand(2, 3, 23, generator=gen, dtype=DT)
    y, state = nlframe.memory_scan(q, k, v, memory="linear", objective="dot", lr=lr,
                                   chunk_size=chunk, backend=backend)
    scores = (q @ k.transpose(-1, -2)) * lr[:, :, None, :]  # (B, H, T, T): θ_s (q_t·k_s)
    expected = scores.tril() @ v
    assert_close(y, expected, "y")
    assert_close(state.params["W"], torch.einsum("bht,bhtv,bhtk->bhvk", lr, v, k), "W_T")


@pytest.mark.parametrize("backend", BACKENDS)
def test_l2_chunk1_is_the_gated_delta_rule(backend):
    """``W_t = W_{t−1}((1−α_t)I − θ_t k_t k_tᵀ) + θ_t v_t k_tᵀ`` with η = 0, by hand."""
    gen = torch.Generator().manual_seed(1)
    B, H, T, Dk, Dv = 2, 2, 37, 4, 3
    q, k, v = qkv(gen, B, H, T, Dk, Dv)
    lr, decay, _ = gates(gen, (B, H, T))
    y, state = nlframe.memory_scan(q, k, v, memory="linear", objective="l2", lr=lr, decay=decay,
                                   momentum=0.0, chunk_size=1, backend=backend)
    for b in range(B):
        for h in range(H):
            W = torch.zeros(Dv, Dk, dtype=DT)
            for t in range(T):
                kt, th, al = k[b, h, t], lr[b, h, t], decay[b, h, t]
                W = W @ ((1 - al) * torch.eye(Dk, dtype=DT) - th * torch.outer(kt, kt)) \
                    + th * torch.outer(v[b, h, t], kt)
                assert_close(y[b, h, t], W @ q[b, h, t], f"y[{b},{h},{t}]")
            assert_close(state.params["W"][b, h], W, f"W_T[{b},{h}]")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("chunk", [2, 3, 8])
def test_l2_chunks_are_minibatch_gradient_descent(backend, chunk):
    """α = η = 0: inside chunk c every gradient is taken at W_{cC}, so
    ``W_{cC+j} = W_{cC} − Σ_{i≤j} θ_i (W_{cC} k_i − v_i) k_iᵀ`` (TTT mini-batch GD)."""
    gen = torch.Generator().manual_seed(2)
    B, H, T, Dk, Dv = 1, 2, 19, 3, 4
    q, k, v = qkv(gen, B, H, T, Dk, Dv)
    lr = torch.rand(B, H, T, generator=gen, dtype=DT)
    y, _ = nlframe.memory_scan(q, k, v, memory="linear", objective="l2", lr=lr, chunk_size=chunk,
                               backend=backend)
    for h in range(H):
        W = torch.zeros(Dv, Dk, dtype=DT)
        for c0 in range(0, T, chunk):
            W_start, W = W, W.clone()
            for t in range(c0, min(T, c0 + chunk)):
                kt = k[0, h, t]
                W = W - lr[0, h, t] * torch.outer(W_start @ kt - v[0, h, t], kt)
                assert_close(y[0, h, t], W @ q[0, h, t], f"y[{h},{t}]")


@pytest.mark.parametrize("backend", BACKENDS)
def test_momentum_and_decay_single_token_by_hand(backend):
    """One chunk-1 step from a random state: S' = ηS − θ(Wk − v)kᵀ, W' = (1−α)W + S'."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = qkv(gen, 1, 1, 1, 3, 2)
    state = random_state(gen, "linear", 1, 1, 3, 2)
    W, S = state.params["W"][0, 0], state.momentum["W"][0, 0]
    y, new = nlframe.memory_scan(q, k, v, lr=0.7, decay=0.2, momentum=0.9, state=state,
                                 backend=backend)
    kt = k[0, 0, 0]
    S1 = 0.9 * S - 0.7 * torch.outer(W @ kt - v[0, 0, 0], kt)
    W1 = 0.8 * W + S1
    assert_close(new.momentum["W"][0, 0], S1, "S_1")
    assert_close(new.params["W"][0, 0], W1, "W_1")
    assert_close(y[0, 0, 0], W1 @ q[0, 0, 0], "y_1")


# -- streaming ---------------------------------------------------------------------
COMBOS = [("linear", "l2", {}), ("linear", "dot", {}), ("linear", "huber", {}),
          ("mlp", "l2", {"hidden": 5}), ("residual-mlp", "lp", {"hidden": 3})]


@pytest.mark.parametrize("backend", BACKENDS)
@given(combo=st.sampled_from(COMBOS), chunk=st.sampled_from([1, 2, 3, 7, 16]),
       T=st.integers(2, 30), tile_size=st.sampled_from([4, 64]), seed=st.integers(0, 2**16))
def test_streaming_any_split_equals_one_pass(backend, combo, chunk, T, tile_size, seed):
    memory, objective, mkw = combo
    if backend == "chunked" and chunk == 1 and (memory != "linear" or objective == "huber"):
        chunk = 2  # unsupported by chunked at chunk 1
    gen = torch.Generator().manual_seed(seed)
    q, k, v = qkv(gen, 2, 1, T, 3, 3)
    lr, decay, mom = gates(gen, (2, 1, T), lr_max=0.5)
    kw = dict(memory=memory, objective=objective, memory_kwargs=mkw, chunk_size=chunk,
              backend=backend)
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, T), rng.randint(1, min(4, T - 1))))
    with tile(tile_size):
        y_full, s_full = nlframe.memory_scan(q, k, v, lr=lr, decay=decay, momentum=mom, **kw)
        state, ys = None, []
        for lo, hi in zip([0, *cuts], [*cuts, T]):
            y, state = nlframe.memory_scan(q[:, :, lo:hi], k[:, :, lo:hi], v[:, :, lo:hi],
                                           lr=lr[:, :, lo:hi], decay=decay[:, :, lo:hi],
                                           momentum=mom[:, :, lo:hi], state=state, **kw)
            assert state.position == hi % chunk and state.step == hi
            ys.append(y)
    assert_close(torch.cat(ys, 2), y_full, "y")
    assert_close(state.params, s_full.params, "params")
    assert_close(state.momentum, s_full.momentum, "momentum")
    assert_close(state.chunk_params, s_full.chunk_params, "chunk_params")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("memory,objective,chunk", [("linear", "l2", 1), ("linear", "l2", 3),
                                                    ("mlp", "huber", 4)])
def test_token_by_token_streaming(backend, memory, objective, chunk):
    gen = torch.Generator().manual_seed(4)
    T = 11
    q, k, v = qkv(gen, 1, 2, T, 2, 2)
    kw = dict(memory=memory, objective=objective, chunk_size=chunk, backend=backend, lr=0.5,
              decay=0.1, momentum=0.6)
    y_full, s_full = nlframe.memory_scan(q, k, v, **kw)
    state, ys = None, []
    for t in range(T):
        y, state = nlframe.memory_scan(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1],
                                       state=state, **kw)
        ys.append(y)
    assert_close(torch.cat(ys, 2), y_full, "y")
    assert_close(state.params, s_full.params, "params")
    assert_close(state.chunk_params, s_full.chunk_params, "chunk_params")


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunk_bookkeeping(backend):
    """After T tokens from position p: position (p+T) mod C; chunk_params is the state at
    the last chunk start (== params when position is 0)."""
    gen = torch.Generator().manual_seed(5)
    q, k, v = qkv(gen, 1, 1, 7, 2, 2)
    y, s = nlframe.memory_scan(q, k, v, chunk_size=3, backend=backend, lr=0.5)
    assert s.position == 1
    _, s6 = nlframe.memory_scan(q[:, :, :6], k[:, :, :6], v[:, :, :6], chunk_size=3,
                                backend=backend, lr=0.5)
    assert s6.position == 0
    assert_close(s6.chunk_params, s6.params, "chunk_params at a boundary")
    assert_close(s.chunk_params, s6.params, "chunk_params of the open chunk")
    with pytest.raises(ValueError, match="chunk_size=2"):
        nlframe.memory_scan(q, k, v, chunk_size=2, state=s, backend=backend)


# -- batch independence ------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("memory,objective,chunk", [("linear", "l2", 1), ("linear", "dot", 4),
                                                    ("mlp", "l2", 3)])
def test_batch_independence(backend, memory, objective, chunk):
    """Changing sequence b' (inputs and gates) never changes the outputs of b ≠ b'."""
    gen = torch.Generator().manual_seed(6)
    q, k, v = qkv(gen, 3, 2, 13, 3, 3)
    lr, decay, mom = gates(gen, (3, 2, 13), lr_max=0.5)
    kw = dict(memory=memory, objective=objective, chunk_size=chunk, backend=backend)
    y, s = nlframe.memory_scan(q, k, v, lr=lr, decay=decay, momentum=mom, **kw)
    q2, k2, v2 = q.clone(), k.clone(), v.clone()
    lr2 = lr.clone()
    q2[1], k2[1], v2[1], lr2[1] = q[1] * 3, k[1].flip(-2), -v[1], lr[1].flip(-1)
    y2, s2 = nlframe.memory_scan(q2, k2, v2, lr=lr2, decay=decay, momentum=mom, **kw)
    keep = [0, 2]
    assert_close(y2[keep], y[keep], "y of untouched sequences", rtol=1e-13, atol=0)
    assert_close({n: p[keep] for n, p in s2.params.items()},
                 {n: p[keep] for n, p in s.params.items()}, "params", rtol=1e-13, atol=0)
    assert (y2[1] - y[1]).abs().max() > 1e-6  # the changed sequence did change


# -- gradcheck ---------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("memory,objective,chunk", [("linear", "l2", 1), ("linear", "l2", 2),
                                                    ("linear", "huber", 3), ("mlp", "l2", 2)])
def test_gradcheck(backend, memory, objective, chunk):
    gen = torch.Generator().manual_seed(8)
    q, k, v = qkv(gen, 1, 1, 5, 2, 2)
    lr, decay, mom = gates(gen, (1, 1, 5), lr_max=0.8, exact=False)
    state = random_state(gen, memory, 1, 1, 2, 2, {"hidden": 3} if memory == "mlp" else {})
    names = sorted(state.params)
    inputs = [t.clone().requires_grad_() for t in (q, k, v, lr, decay, mom,
                                                   *(state.params[n] for n in names),
                                                   *(state.momentum[n] for n in names))]

    def fn(q, k, v, lr, decay, mom, *flat):
        params = dict(zip(names, flat[:len(names)]))
        moms = dict(zip(names, flat[len(names):]))
        st0 = nlframe.MemoryState(params=params, opt_state={"momentum": moms},
                                  chunk_params=dict(params))
        y, s = nlframe.memory_scan(q, k, v, memory=memory, objective=objective, lr=lr,
                                   decay=decay, momentum=mom, chunk_size=chunk, backend=backend,
                                   state=st0, memory_kwargs={"hidden": 3} if memory == "mlp" else {})
        return (y, *s.params.values(), *s.momentum.values())

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)
