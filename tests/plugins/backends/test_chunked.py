"""The ``chunked`` backend against the ``reference`` token loop (float64): reads,
final state, chunk bookkeeping and gradients w.r.t. every input."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import nlframe
from nlframe_plugins.backends.chunked import ChunkedBackend
from nlframe_plugins.backends.reference import ReferenceBackend

from .scan_cases import (DT, chunk_sizes, compare_backends, gates, qkv, random_state,
                         scan_with_grads, assert_close, tile)

ACTIVATIONS = ["gelu", "silu", "relu", "tanh", "sigmoid", "identity"]


def _inputs(seed, B, H, T, Dk, Dv, lr_max=1.0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = qkv(gen, B, H, T, Dk, Dv)
    lr, decay, momentum = gates(gen, (B, H, T), lr_max=lr_max)
    return gen, dict(q=q, k=k, v=v, lr=lr, decay=decay, momentum=momentum)


shapes = st.tuples(st.integers(1, 3), st.integers(1, 2), st.integers(1, 40), st.integers(1, 6),
                   st.integers(1, 6))


@given(shape=shapes, chunk=chunk_sizes, objective=st.sampled_from(["l2", "dot"]),
       tile_size=st.sampled_from([4, 8, 64]), seed=st.integers(0, 2**16))
def test_linear_affine_matches_reference(shape, chunk, objective, tile_size, seed):
    B, H, T, Dk, Dv = shape
    gen, inputs = _inputs(seed, B, H, T, Dk, Dv)
    state = random_state(gen, "linear", B, H, Dk, Dv)
    compare_backends(inputs, state, tile_size=tile_size, memory="linear", objective=objective,
                     chunk_size=chunk)


@given(shape=shapes, chunk=chunk_sizes.filter(lambda c: c >= 2),
       objective=st.sampled_from([("huber", {"delta": 0.3}), ("huber", {}), ("lp", {"p": 1.0}),
                                  ("lp", {"p": 1.5}), ("lp", {}), ("l2", {})]),
       tile_size=st.sampled_from([4, 64]), seed=st.integers(0, 2**16))
def test_linear_any_objective_matches_reference(shape, chunk, objective, tile_size, seed):
    B, H, T, Dk, Dv = shape
    gen, inputs = _inputs(seed, B, H, T, Dk, Dv, lr_max=0.5)
    state = random_state(gen, "linear", B, H, Dk, Dv)
    name, kwargs = objective
    # l2 through the generic (non-affine) path: the within-chunk loop with ψ = grad
    with mock.patch.object(type(nlframe.scan.make_objective("l2")), "affine_grad",
                           None if name == "l2" else (1.0, -1.0)):
        compare_backends(inputs, state, tile_size=tile_size, memory="linear", objective=name,
                         objective_kwargs=kwargs, chunk_size=chunk)


@given(dims=st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 24), st.integers(1, 4),
                      st.integers(1, 4), st.integers(1, 6)),
       memory=st.sampled_from(["mlp", "residual-mlp"]),
       activation=st.sampled_from(ACTIVATIONS),
       objective=st.sampled_from(["l2", "dot", "huber", "lp"]),
       chunk=chunk_sizes.filter(lambda c: c >= 2), tile_size=st.sampled_from([4, 64]),
       seed=st.integers(0, 2**16))
def test_mlp_matches_reference(dims, memory, activation, objective, chunk, tile_size, seed):
    B, H, T, Dk, Dv, hidden = dims
    if memory == "residual-mlp":
        Dv = Dk
    gen, inputs = _inputs(seed, B, H, T, Dk, Dv, lr_max=0.5)
    kw = {"hidden": hidden, "activation": activation}
    state = random_state(gen, memory, B, H, Dk, Dv, kw)
    compare_backends(inputs, state, tile_size=tile_size, memory=memory, objective=objective,
                     memory_kwargs=kw, chunk_size=chunk)


@pytest.mark.parametrize("tile_size", [4, 64])
@pytest.mark.parametrize("memory,objective,chunk", [
    ("linear", "l2", 1), ("linear", "l2", 3), ("linear", "dot", 2), ("linear", "huber", 5),
    ("mlp", "l2", 4), ("residual-mlp", "huber", 3)])
def test_default_state_matches_reference(memory, objective, chunk, tile_size):
    """``state=None`` (zeros for linear, the seeded init for MLPs) and float gates."""
    gen = torch.Generator().manual_seed(7)
    q, k, v = qkv(gen, 2, 2, 19, 3, 3)
    kw = dict(memory=memory, objective=objective, chunk_size=chunk, lr=0.4, decay=0.05,
              momentum=0.7)
    y_ref, s_ref = nlframe.memory_scan(q, k, v, backend="reference", **kw)
    with mock.patch.object(ChunkedBackend, "tile", tile_size):
        y, s = nlframe.memory_scan(q, k, v, backend="chunked", **kw)
    assert_close(y, y_ref, "y")
    assert_close(s.params, s_ref.params, "params")
    assert_close(s.momentum, s_ref.momentum, "momentum")


@pytest.mark.parametrize("chunk", [1, 3, 8])
def test_float32_close_to_float64(chunk):
    gen, inputs = _inputs(3, 2, 2, 70, 8, 8)
    kw = dict(memory="linear", objective="l2", chunk_size=chunk, lr=inputs["lr"],
              decay=inputs["decay"], momentum=inputs["momentum"] * 0.9)
    y64, _ = nlframe.memory_scan(inputs["q"], inputs["k"], inputs["v"], backend="reference", **kw)
    kw32 = {n: (x.float() if torch.is_tensor(x) else x) for n, x in kw.items()}
    y32, _ = nlframe.memory_scan(inputs["q"].float(), inputs["k"].float(), inputs["v"].float(),
                                 backend="chunked", **kw32)
    assert_close(y32.double(), y64, "y float32", rtol=1e-4)


def test_unsupported_requests_are_refused_and_auto_falls_back():
    gen = torch.Generator().manual_seed(0)
    q, k, v = qkv(gen, 1, 1, 5, 2, 2)
    for memory, objective in [("mlp", "l2"), ("linear", "huber"), ("linear", "lp")]:
        with pytest.raises(ValueError, match="chunked.*chunk_size=1"):
            nlframe.memory_scan(q, k, v, memory=memory, objective=objective, chunk_size=1,
                                backend="chunked")
        with mock.patch.object(ChunkedBackend, "scan", side_effect=AssertionError("not chunked")):
            y, _ = nlframe.memory_scan(q, k, v, memory=memory, objective=objective, chunk_size=1)
        y_ref, _ = nlframe.memory_scan(q, k, v, memory=memory, objective=objective, chunk_size=1,
                                       backend="reference")
        assert_close(y, y_ref, f"auto {memory}/{objective}")
    with pytest.raises(ValueError, match="dtype"):
        nlframe.memory_scan(q.half(), k.half(), v.half(), backend="chunked")


def test_auto_picks_chunked_when_supported():
    gen = torch.Generator().manual_seed(0)
    q, k, v = qkv(gen, 1, 1, 5, 2, 2)
    with mock.patch.object(ReferenceBackend, "scan", side_effect=AssertionError("not reference")):
        nlframe.memory_scan(q, k, v, memory="linear", objective="l2", chunk_size=1)
        nlframe.memory_scan(q, k, v, memory="mlp", objective="huber", chunk_size=2)


def test_other_update_rules_are_refused():
    from nlframe.interfaces import UpdateRule
    from nlframe.registry import get_registry

    class PlainGD(UpdateRule):
        """W ← W − θ g (test rule)."""
        hyperparams = {"lr": 0.1}

        def init(self, params):
            return {}

        def update(self, grads, state, params, **hyper):
            lr = self.resolve(hyper)["lr"]
            return {n: p - lr[..., None, None] * grads[n] for n, p in params.items()}, {}

    class Plugin:
        @staticmethod
        @nlframe.hookimpl
        def nlframe_register_optimizer(register):
            register("test-plain-gd", PlainGD)

    reg = get_registry()
    reg.register_plugin(Plugin, name="test-plain-gd-plugin")
    try:
        gen = torch.Generator().manual_seed(0)
        q, k, v = qkv(gen, 1, 1, 4, 2, 2)
        with pytest.raises(ValueError, match="token writes in chunk form"):
            nlframe.memory_scan(q, k, v, optimizer="test-plain-gd", backend="chunked")
        y, state = nlframe.memory_scan(q, k, v, optimizer="test-plain-gd", lr=0.5)
        W = torch.zeros(2, 2, dtype=DT)
        for t in range(4):  # delta rule without momentum or decay, by hand
            kt, vt = k[0, 0, t], v[0, 0, t]
            W = W - 0.5 * torch.outer(W @ kt - vt, kt)
            assert_close(y[0, 0, t], W @ q[0, 0, t], f"y[{t}]")
    finally:
        reg.unregister_plugin(Plugin)


@given(shape=shapes, chunk=chunk_sizes, objective=st.sampled_from(["l2", "dot"]),
       tile_size=st.sampled_from([4, 8, 64]), position=st.integers(0, 6),
       seed=st.integers(0, 2**16))
def test_linear_without_momentum_matches_reference(shape, chunk, objective, tile_size, position,
                                                   seed):
    """η left at its default 0 (the delta rule, DeltaNet, linear attention): the chunk form
    carries W alone; reads, W, the returned S = −θ_T g_T, the chunk start and every
    gradient equal the reference's; and, without gradients, from a state inside a chunk
    (the gradient harness's leaves start at a chunk start)."""
    B, H, T, Dk, Dv = shape
    gen, inputs = _inputs(seed, B, H, T, Dk, Dv)
    del inputs["momentum"]
    state = random_state(gen, "linear", B, H, Dk, Dv)
    kw = dict(memory="linear", objective=objective, chunk_size=chunk)
    if position % chunk:  # a reference prefix of `position` tokens ends inside a chunk
        _, mid = nlframe.memory_scan(*qkv(gen, B, H, position % chunk, Dk, Dv), lr=0.5,
                                     state=state, backend="reference", **kw)
        runs = {}
        for backend in ("reference", "chunked"):
            with tile(tile_size):
                runs[backend] = nlframe.memory_scan(inputs["q"], inputs["k"], inputs["v"],
                                                    lr=inputs["lr"], decay=inputs["decay"],
                                                    state=mid, backend=backend, **kw)
        (y_ref, s_ref), (y, s) = runs["reference"], runs["chunked"]
        assert_close(y, y_ref, "y (inside a chunk)")
        for part in ("params", "momentum", "chunk_params"):
            assert_close(getattr(s, part), getattr(s_ref, part), f"{part} (inside a chunk)")
        assert (s.position, s.step) == (s_ref.position, s_ref.step)
    ref, ref_state, ref_g = scan_with_grads("reference", inputs, state, **kw)
    out, new_state, g = scan_with_grads("chunked", inputs, state, tile_size=tile_size, **kw)
    for key in ref:
        assert_close(out[key], ref[key], key)
    assert (new_state.position, new_state.step) == (ref_state.position, ref_state.step)
    for name in ref_g:  # S0 enters nothing at η = 0: no gradient on either side, or zero
        zero = torch.zeros_like(inputs.get(name, state.params["W"]))
        assert_close(zero if g[name] is None else g[name],
                     zero if ref_g[name] is None else ref_g[name], f"d/d{name}")


def test_gradients_at_exact_zero_and_one_gates_match_reference():
    """η = 0 and α = 1 on many tokens (products of gates that vanish): gradients stay
    finite and equal the reference's, and reach the initial W and S."""
    gen, inputs = _inputs(11, 1, 1, 12, 3, 3)
    inputs["momentum"][..., 1::2] = 0.0
    inputs["momentum"][..., 0] = 0.8
    inputs["decay"][..., 2::3] = 1.0
    inputs["decay"][..., 0] = 0.1
    state = random_state(gen, "linear", 1, 1, 3, 3)
    for chunk in (1, 2, 5):
        _, _, g = scan_with_grads("chunked", inputs, state, memory="linear", objective="l2",
                                  chunk_size=chunk)
        for name, grad in g.items():
            assert grad is not None and torch.isfinite(grad).all(), name
        assert g["W0.W"].abs().sum() > 0 and g["S0.W"].abs().sum() > 0
        compare_backends(inputs, state, memory="linear", objective="l2", chunk_size=chunk)
