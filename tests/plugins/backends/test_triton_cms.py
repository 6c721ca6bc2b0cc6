"""The CMS-level Triton kernels (``triton_ops/chunk_writes_mlp.py``: an MLP memory written
once per chunk, read at the chunk start, momentum rule) against ``reference``.

They run on CPU through Triton's interpreter: an autouse fixture sets
``TRITON_INTERPRET=1`` for each test only (monkeypatch), so no other test sees it. That
is enough because Triton reads the flag when ``triton.jit`` decorates a function, and the
module decorates its kernels on first use in each mode (``import triton`` below happens
before the flag is set, which is exactly that case).

The kernels run in float32; the reference runs in float64 on the same (float32-valued)
inputs, so the errors are the kernels' own. Tolerances, norm-wise
(``‖a − e‖ ≤ rtol‖e‖ + atol``): reads, every field of the returned states and the surprise
rtol 5e-5, atol 1e-6; gradients w.r.t. q, k, v, θ, α, η and the initial W1, W2, S1, S2
(and an open chunk's chunk_params and pending) rtol 5e-5, atol 1e-6. Measured: 1e-7 to
6e-7 relative for both.
"""

from __future__ import annotations

import itertools

import pytest
import torch

pytest.importorskip("triton")

from nlframe.level import MemoryState
from nlframe.scan import (initial_state, make_memory, make_objective, make_request, make_rule,
                          run_scan)
from nlframe_plugins.backends.triton_ops.chunk_writes_mlp import cms_unsupported_reason, scan_cms

from .scan_cases import assert_close, functional_grads, gates, qkv

F32, F64 = torch.float32, torch.float64
TOL = {"rtol": 5e-5, "atol": 1e-6}
GRAD_TOL = {"rtol": 5e-5, "atol": 1e-6}
B, H = 2, 2
SEQ = ("q", "k", "v", "lr", "decay", "momentum")


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def dims(memory: str) -> tuple[int, int, int]:
    """``(Dk, Dv, Dh)`` (Dk, Dv padded to 16; Dh = 16: one hidden block)."""
    return (8, 8, 16) if memory == "residual-mlp" else (12, 10, 16)


def make_inputs(seed: int, memory: str = "mlp", *, T: int, Dk: int | None = None,
                Dv: int | None = None, Dh: int | None = None, position: int = 0,
                batch: int = B, heads: int = H) -> dict:
    """float32-valued q, k (‖k‖ ≤ 1), v, gates θ, α, η ∈ [0, 1] with exact 0s and 1s, random
    W1, W2 and momentum, and for an open chunk (``position > 0``) its own chunk-start
    W1c, W2c and pending step G1, G2."""
    d = dims(memory)
    Dk, Dv, Dh = Dk or d[0], Dv or d[1], Dh or d[2]
    gen = torch.Generator().manual_seed(seed)
    q, k, v = qkv(gen, batch, heads, T, Dk, Dv)
    lr, decay, mom = gates(gen, (batch, heads, T))
    out = {"q": q, "k": k, "v": v, "lr": lr, "decay": decay, "momentum": mom,
           "W1": torch.randn(batch, heads, Dh, Dk, generator=gen, dtype=F64) / Dk ** 0.5,
           "W2": torch.randn(batch, heads, Dv, Dh, generator=gen, dtype=F64) / Dh ** 0.5}
    out["S1"], out["S2"] = 0.1 * torch.randn_like(out["W1"]), 0.1 * torch.randn_like(out["W2"])
    if position:
        out["W1c"] = out["W1"] + 0.1 * torch.randn_like(out["W1"])
        out["W2c"] = out["W2"] + 0.1 * torch.randn_like(out["W2"])
        out["G1"], out["G2"] = 0.1 * torch.randn_like(out["W1"]), 0.1 * torch.randn_like(out["W2"])
    return {n: x.to(F32) for n, x in out.items()}


def state_of(leaves: dict, memory, chunk: int, position: int, step: int) -> MemoryState:
    batch, heads = leaves["q"].shape[:2]
    state = initial_state(memory, make_rule("momentum"), batch=batch, heads=heads,
                          params={"W1": leaves["W1"], "W2": leaves["W2"]}, chunk_size=chunk)
    state.opt_state = {"momentum": {"W1": leaves["S1"], "W2": leaves["S2"]}}
    if position:
        state.chunk_params = {"W1": leaves["W1c"], "W2": leaves["W2c"]}
        state.pending = {"W1": leaves["G1"], "W2": leaves["G2"]}
        state.position, state.step = position, step
    return state


def flat_state(state: MemoryState) -> dict:
    return {f"{field}.{n}": t for field in ("params", "momentum", "chunk_params", "pending")
            for n, t in (getattr(state, field) or {}).items()}


def scan(backend: str, inputs: dict, *, memory: str = "mlp", objective: str = "l2",
         chunk: int, dtype=F32, splits: tuple[int, ...] = (), position: int = 0, step: int = 0,
         grads: bool = True, activation: str = "gelu", rule=None, **options):
    """Scan ``inputs`` (in pieces cut at ``splits``, carrying the state) with ``reference``
    (``memory_scan``) or the kernels (the ``triton`` backend, or ``scan_cms`` of the same
    request when kernel ``options`` are given); return the reads
    and final state fields, every call's state, and the gradients of a fixed random
    functional of them w.r.t. every input."""
    leaves = {n: x.detach().to(dtype, copy=True).requires_grad_(grads) for n, x in inputs.items()}
    Dk, Dv, Dh = leaves["q"].shape[-1], leaves["v"].shape[-1], leaves["W1"].shape[-2]
    mem = make_memory(memory, Dk, Dv, hidden=Dh, activation=activation)
    obj, rule = make_objective(objective), rule or make_rule("momentum")
    names = {"memory": memory, "objective": objective, "optimizer": "momentum"}
    state = state_of(leaves, mem, chunk, position, step)
    ys, states, cuts = [], [], (0, *splits, leaves["q"].shape[2])
    for lo, hi in itertools.pairwise(cuts):
        part = {n: leaves[n][:, :, lo:hi] for n in SEQ}
        kw = {"memory": mem, "objective": obj, "rule": rule, "names": names, "lr": part["lr"],
              "decay": part["decay"], "momentum": part["momentum"], "chunk_size": chunk,
              "state": state, "read": "chunk_start", "write": "chunk"}
        if backend == "reference":
            y, state = run_scan(part["q"], part["k"], part["v"], backend="reference", **kw)
        else:
            request = make_request(part["q"], part["k"], part["v"], **kw)
            assert cms_unsupported_reason(request) is None
            if options:  # block sizes or checkpoints of the kernels' own
                y, state = scan_cms(request, **options)
            else:  # through the triton backend
                y, state = run_scan(part["q"], part["k"], part["v"], backend="triton", **kw)
        ys.append(y)
        states.append(state)
    out = {"y": torch.cat(ys, 2), **flat_state(state)}
    if not grads:
        return out, states, {}
    return out, states, functional_grads(out, leaves)


def compare(inputs: dict, **kw) -> None:
    """The kernels (float32) equal ``reference`` (float64): reads, every field of every
    call's returned state (params, momentum, chunk_params, pending, position, step,
    chunk_size, surprise) and every gradient."""
    ref, ref_states, ref_g = scan("reference", inputs, dtype=F64, **kw)
    out, states, g = scan("triton", inputs, **kw)
    assert set(out) == set(ref)
    for key in ref:
        assert out[key].dtype == F32
        assert_close(out[key], ref[key], key, **TOL)
    for i, (st, rs) in enumerate(zip(states, ref_states)):
        assert (st.position, st.step, st.chunk_size) == (rs.position, rs.step, rs.chunk_size)
        assert set(flat_state(st)) == set(flat_state(rs))
        for key, t in flat_state(rs).items():
            assert_close(flat_state(st)[key], t, f"call {i}: {key}", **TOL)
        # a chunk opened in the call: its chunk_params are the new params themselves
        assert [st.chunk_params[n] is st.params[n] for n in st.params] == \
            [rs.chunk_params[n] is rs.params[n] for n in rs.params]
        assert st.surprise.shape == (inputs["q"].shape[:2]) and not st.surprise.requires_grad
        assert_close(st.surprise, rs.surprise, f"call {i}: surprise", **TOL)
    for name in ref_g:
        assert_close(g[name], ref_g[name], f"d/d{name}", **GRAD_TOL)


@pytest.mark.parametrize("chunk, T", [(1, 6), (2, 9), (5, 11), (32, 11)])  # 32 > T: left open
@pytest.mark.parametrize("objective", ["l2", "dot"])
@pytest.mark.parametrize("memory", ["mlp", "residual-mlp"])
def test_matches_reference(memory, objective, chunk, T):
    compare(make_inputs(chunk, memory, T=T), memory=memory, objective=objective, chunk=chunk)


@pytest.mark.parametrize("splits", [(10,), (7,), (7, 9)])
def test_streaming_equals_reference(splits):
    """Two calls cut at a chunk boundary (10 with C = 5) or inside a chunk (7: the second
    call starts at position 2), and three calls whose middle one opens no chunk (7–9); the
    state is carried between the calls and the gradients flow through it. Dh = 24: two
    hidden blocks, the second one masked."""
    compare(make_inputs(3, T=13, Dh=24), chunk=5, splits=splits)


@pytest.mark.parametrize("T", [11, 2])
def test_open_chunk_at_the_start(T):
    """A state 3 tokens into a chunk of 5 with its own chunk_params and pending step (and
    their gradients); T = 2 ends inside that same chunk."""
    compare(make_inputs(4, "residual-mlp", T=T, Dh=24, position=3), memory="residual-mlp",
            objective="dot", chunk=5, position=3, step=8)


def test_hidden_blocks_and_checkpoints():
    """Dh = 40 in hidden blocks of 16 (the last one masked) and a checkpoint every 2 chunks
    (5 chunks, the last one open: 3 segments, the last one partial)."""
    compare(make_inputs(5, T=9, Dh=40), chunk=2, block_h=16, checkpoint_every=2)


@pytest.mark.parametrize("activation", ["silu", "relu", "sigmoid", "tanh", "identity"])
def test_activations(activation):
    compare(make_inputs(6, T=7), chunk=3, activation=activation)


def test_wide_heads():
    """Dk = Dv = 64, Dh = 128: 16-unit hidden blocks, 64-wide tiles."""
    inputs = make_inputs(7, T=5, Dk=64, Dv=64, Dh=128, batch=1, heads=1)
    compare(inputs, chunk=2)


def test_rule_defaults_fill_gates_left_at_the_scan_default():
    """decay and momentum left at the scan's defaults take the rule's own defaults, as in
    the reference (rule.update resolves them)."""
    inputs = make_inputs(8, T=9)
    for n in ("decay", "momentum"):
        inputs.pop(n)
    rule = make_rule("momentum", decay=0.2, momentum=0.5)
    mem = make_memory("mlp", 12, 10, hidden=16)
    names = {"memory": "mlp", "objective": "l2", "optimizer": "momentum"}
    kw = {"memory": mem, "objective": make_objective("l2"), "rule": rule, "names": names,
          "chunk_size": 2, "read": "chunk_start", "write": "chunk"}
    f64 = {n: x.to(F64) for n, x in inputs.items()}
    y_ref, ref = run_scan(f64["q"], f64["k"], f64["v"], lr=f64["lr"], backend="reference",
                          state=state_of(f64, mem, 2, 0, 0), **kw)
    request = make_request(inputs["q"], inputs["k"], inputs["v"], lr=inputs["lr"],
                           state=state_of(inputs, mem, 2, 0, 0), **kw)
    # make_request hands the rule's defaults to the backends as gates
    assert torch.equal(request.hyper["decay"], torch.full_like(inputs["lr"], 0.2))
    assert torch.equal(request.hyper["momentum"], torch.full_like(inputs["lr"], 0.5))
    y, state = scan_cms(request)
    assert_close(y, y_ref, "y", **TOL)
    assert_close(state.params, ref.params, "params", **TOL)
    assert_close(state.momentum, ref.momentum, "momentum", **TOL)


def test_without_grad_and_write_only():
    """No input needs a gradient: no checkpoints, the same reads and state; a write-only
    request (``outputs=False``) returns an empty ``y`` and the same state."""
    inputs = make_inputs(9, T=11)
    ref, ref_states, _ = scan("reference", inputs, dtype=F64, grads=False, chunk=5)
    out, _, _ = scan("triton", inputs, grads=False, chunk=5)
    for key in ref:
        assert_close(out[key], ref[key], key, **TOL)
    assert not any(t.requires_grad for t in out.values())
    mem = make_memory("mlp", 12, 10, hidden=16)
    request = make_request(inputs["q"], inputs["k"], inputs["v"], memory=mem,
                           objective=make_objective("l2"), rule=make_rule("momentum"),
                           names={"memory": "mlp"}, lr=inputs["lr"], decay=inputs["decay"],
                           momentum=inputs["momentum"], chunk_size=5,
                           state=state_of(inputs, mem, 5, 0, 0), read="chunk_start",
                           write="chunk", outputs=False)
    y, state = scan_cms(request)
    assert y.shape == (B, H, 0, 10)
    for key, t in flat_state(ref_states[-1]).items():
        assert_close(flat_state(state)[key], t, key, **TOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_computed_in_float32(dtype):
    """float16 / bfloat16 in and out, float32 inside: the float64 result of the rounded
    inputs, rounded once."""
    inputs = {n: x.to(dtype).to(F32) for n, x in make_inputs(10, T=6).items()}
    ref, _, _ = scan("reference", inputs, dtype=F64, grads=False, chunk=2)
    out, states, _ = scan("triton", inputs, dtype=dtype, grads=False, chunk=2)
    assert out["y"].dtype == states[-1].params["W1"].dtype == dtype
    for key in ref:
        assert_close(out[key].to(F64), ref[key], key, rtol=1e-2, atol=1e-3)


def _request(*, memory="mlp", objective="l2", optimizer="momentum", read="chunk_start",
             write="chunk", dtype=F32, dim=4, activation="gelu", **kw):
    q = torch.zeros(1, 1, 3, dim, dtype=dtype)
    mkw = {"hidden": 4, "activation": activation} if "mlp" in memory else {}
    return make_request(q, q, q, memory=make_memory(memory, dim, dim, **mkw),
                        objective=make_objective(objective), rule=make_rule(optimizer),
                        names={"memory": memory, "objective": objective, "optimizer": optimizer},
                        chunk_size=2, read=read, write=write, **kw)


@pytest.mark.parametrize("case, words", [
    ({"memory": "linear"}, "structure 'linear'"),
    ({"objective": "huber"}, "no affine gradient"),
    ({"optimizer": "dgd"}, "structure 'dgd'"),
    ({"read": "after_write"}, "read='after_write'"),
    ({"write": "token"}, "write='token'"),
    ({"self_target": True}, "self_target=True"),
    ({"grad_clip": 1.0}, "grad_clip=1.0"),
    ({"truncate": True}, "truncate=True"),
    ({"optimizer_kwargs": {"lr": 0.5}}, "static hyperparameters ['lr']"),
    ({"dtype": F64}, "dtype torch.float64"),
    ({"dim": 136}, "widths up to 128"),
])
def test_unsupported_requests_say_why(case, words):
    request = _request(**case)
    reason = cms_unsupported_reason(request)
    assert reason is not None and words in reason
    with pytest.raises(ValueError, match="scan_cms cannot compute"):
        scan_cms(request)


def test_activation_without_kernel_and_cpu_without_interpreter(monkeypatch):
    request = _request()
    assert cms_unsupported_reason(request) is None
    monkeypatch.setattr(request.memory, "activation_name", "softplus")
    assert "activation 'softplus' has no Triton implementation" in cms_unsupported_reason(request)
    monkeypatch.delenv("TRITON_INTERPRET")
    assert "TRITON_INTERPRET=1" in cms_unsupported_reason(_request())
