"""The dgd self-target Triton kernels (triton_ops/dgd_self_target.py) against ``reference``.

Run on CPU through Triton's interpreter: an autouse fixture sets ``TRITON_INTERPRET=1``
for each test only (monkeypatch), as in test_triton.py. The kernels run in float32; the
reference runs in float64 on the same (float32-representable) values, so the errors are
the kernels' own. Tolerances, norm-wise (``‖a − e‖ ≤ rtol‖e‖ + atol``): reads, final
``W``, ``W_c`` and surprise rtol 1e-4, atol 1e-5; gradients w.r.t. q, k, v, θ, α, ``W_0``
and the state's ``W_c`` rtol 1e-3, atol 1e-4. Measured: at most 4e-7 relative for the
outputs and 7e-7 for the gradients (float32 rounding), linear and mlp memories alike.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from nlframe_plugins.memories.linear import LinearMemory

from nlframe.level import MemoryState
from nlframe.scan import make_memory, make_objective, make_request, make_rule, run_scan

from .scan_cases import assert_close, functional_grads, gates, qkv

pytest.importorskip("triton")

from nlframe_plugins.backends.triton_ops import dgd_self_target as dst

F32, F64 = torch.float32, torch.float64
TOL = {"rtol": 1e-4, "atol": 1e-5}
GRAD_TOL = {"rtol": 1e-3, "atol": 1e-4}
B, H, T, D = 2, 2, 37, 8  # T = 2·16 + 5: three checkpoint segments, the last one partial
SEQ = ("q", "k", "v", "lr", "decay")


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def make_inputs(seed: int, *, T: int = T, D: int = D, batch: int = B, heads: int = H,
                hidden: int | None = None) -> dict:
    """float32-representable inputs: q, k (‖k‖ ≤ 1), v ``N(0, 1/4)``, gates θ ∈ [0, 1],
    α ∈ [0, 0.2] with exact 0s and bounds (a small α keeps the final W of order 1), random
    ``W0`` and an open chunk's own ``Wc0`` (``hidden``: ``W1``, ``W2`` of an mlp memory,
    as ``W0.W1`` …)."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = qkv(gen, batch, heads, T, D, D)
    lr, decay, _ = gates(gen, (batch, heads, T))
    out = {"q": q, "k": k, "v": 0.5 * v, "lr": lr, "decay": 0.2 * decay}
    shapes = {"W": (D, D)} if hidden is None else {"W1": (hidden, D), "W2": (D, hidden)}
    for start in ("W0", "Wc0"):
        for name, shape in shapes.items():
            scale = 0.3 if hidden is None else 0.5
            out[f"{start}.{name}"] = scale * torch.randn(batch, heads, *shape, generator=gen,
                                                          dtype=F64)
    return {n: x.to(F32) for n, x in out.items()}


def params_of(leaves: dict, start: str) -> dict:
    return {n.split(".", 1)[1]: x for n, x in leaves.items() if n.startswith(start + ".")}


def scan(backend: str, inputs: dict, *, dtype=F32, splits: tuple[int, ...] = (), position=0,
         step=0, grads: bool = True, objective="l2", chunk_size=1, grad_clip=None,
         truncate=False, outputs=True, block_v=None, memory="linear", memory_kwargs=None,
         block_h=None):
    """Scan ``inputs`` (in pieces cut at ``splits``, carrying the state) with ``reference``
    (``run_scan``) or the kernels (the ``triton`` backend, or ``scan_dgd_self`` with
    block sizes given); return the reads, final ``W``,
    ``W_c``, the states and the gradients of a fixed random functional of them."""
    leaves = {n: x.detach().to(dtype, copy=True).requires_grad_(grads) for n, x in inputs.items()}
    D_ = leaves["q"].shape[-1]
    W0 = params_of(leaves, "W0")
    state = MemoryState(params=W0, opt_state={},
                        chunk_params=params_of(leaves, "Wc0") if position else dict(W0),
                        position=position, chunk_size=chunk_size, step=step)
    kw = {"memory": make_memory(memory, D_, D_, **(memory_kwargs or {})),
          "objective": make_objective(objective), "rule": make_rule("dgd"),
          "names": {"memory": memory, "objective": objective, "optimizer": "dgd"},
          "chunk_size": chunk_size, "read": "chunk_start", "self_target": True,
          "grad_clip": grad_clip, "truncate": truncate, "outputs": outputs}
    ys, states, cuts = [], [], (0, *splits, leaves["q"].shape[2])
    for lo, hi in itertools.pairwise(cuts):
        q, k, v, lr, decay = (leaves[n][:, :, lo:hi] for n in SEQ)
        if backend == "reference":
            y, state = run_scan(q, k, v, lr=lr, decay=decay, state=state, backend="reference",
                                **kw)
        else:
            request = make_request(q, k, v, lr=lr, decay=decay, state=state, **kw)
            assert dst.dgd_self_unsupported_reason(request) is None
            if block_v is None and block_h is None:  # through the triton backend
                y, state = run_scan(q, k, v, lr=lr, decay=decay, state=state, backend="triton",
                                    **kw)
            else:  # the kernels' own block sizes
                y, state = dst.scan_dgd_self(request, block_v=block_v, block_h=block_h)
        ys.append(y)
        states.append(state)
    out = {"y": torch.cat(ys, 2), **{f"W.{n}": p for n, p in state.params.items()},
           **{f"Wc.{n}": p for n, p in state.chunk_params.items()}}
    if not grads:
        return out, states, {}
    return out, states, functional_grads(out, leaves)


def check_state(state: MemoryState, ref: MemoryState) -> None:
    """Every field of the returned state as ``reference`` builds it."""
    assert (state.position, state.step, state.chunk_size) == \
        (ref.position, ref.step, ref.chunk_size)
    assert state.opt_state == ref.opt_state == {}
    assert state.pending == ref.pending == {}
    assert set(state.params) == set(ref.params) == set(state.chunk_params)
    assert_close(state.params, ref.params, "params", **TOL)
    assert_close(state.chunk_params, ref.chunk_params, "chunk_params", **TOL)
    for name in ref.params:
        assert (state.chunk_params[name] is state.params[name]) == (ref.position == 0)
    assert state.surprise.shape == ref.surprise.shape == next(iter(ref.params.values())).shape[:2]
    assert state.surprise.dtype == F32 and not state.surprise.requires_grad
    assert_close(state.surprise, ref.surprise, "surprise", **TOL)


def compare(inputs: dict, *, splits=(), ref_splits=(), **kw) -> None:
    """Kernels (float32) equal ``reference`` (float64): reads, every state field and
    every gradient."""
    ref, ref_states, ref_g = scan("reference", inputs, dtype=F64, splits=ref_splits, **kw)
    out, states, g = scan("triton", inputs, splits=splits, **kw)
    for key in ref:
        assert out[key].dtype == F32
        assert_close(out[key], ref[key], key, **TOL)
    if len(states) == len(ref_states):
        for state, ref_state in zip(states, ref_states):
            check_state(state, ref_state)
    else:  # the surprise is per call
        last, ref_last = states[-1], ref_states[-1]
        assert (last.position, last.step, last.opt_state, last.pending) == \
            (ref_last.position, ref_last.step, ref_last.opt_state, ref_last.pending)
    for name in ref_g:
        assert_close(g[name], ref_g[name], f"d/d{name}", **GRAD_TOL)


@pytest.mark.parametrize("chunk", [1, 2, 5, 50])  # 50 > T: one open chunk
@pytest.mark.parametrize("objective", ["l2", "dot"])
def test_matches_reference(objective, chunk):
    """T = 24: two checkpoint segments of 16, the last one partial."""
    compare(make_inputs(chunk, T=24), objective=objective, chunk_size=chunk)


def test_streaming_split_inside_a_chunk_equals_one_pass():
    """Cut at 13 (C = 5: position 3), the state carried between the two calls, equals one
    reference pass, gradients through the carried W and W_c included."""
    compare(make_inputs(3), splits=(13,), chunk_size=5)


def test_streaming_both_split():
    """Both sides in the same two calls: every state field of each call matches."""
    compare(make_inputs(4), splits=(13,), ref_splits=(13,), chunk_size=5, objective="dot")


def test_open_chunk_start_state():
    """A state 3 tokens into a chunk of 5, with its own chunk-start W_c (and its gradient)."""
    compare(make_inputs(5), position=3, step=8, chunk_size=5)


def test_short_checkpoint_segments(monkeypatch):
    """Segments of 4 tokens (C = 5: chunks straddle every segment boundary; the backward
    takes W_c from a checkpoint or from its scratch rows)."""
    monkeypatch.setattr(dst, "checkpoint_interval", lambda T: 4)
    compare(make_inputs(6), position=2, step=2, chunk_size=5)


def test_several_row_blocks():
    """Rows in blocks of 4 (D = 10: three programs per head, the last one masked); the
    per-block partial sums (‖δ‖², dq, dk, dv, dθ, dα) are summed in torch."""
    compare(make_inputs(7, T=20, D=10), chunk_size=3, block_v=4)


@pytest.mark.parametrize("clip", [None, 6.0])
def test_head_dim_64(clip):
    """A 64-wide head (BK = 64, BV = 32; one 64-row block when clipping: ‖δ_t‖ ∈ [4, 10])."""
    compare(make_inputs(8, T=6, D=64, batch=1, heads=2), chunk_size=2, grad_clip=clip)


@pytest.mark.parametrize("objective, chunk, position", [("l2", 3, 0), ("dot", 5, 3), ("l2", 1, 0)])
def test_grad_clip(objective, chunk, position):
    """``δ·min(1, τ/‖δ‖)`` with ‖δ‖ over all rows (one program holds them, even with
    ``block_v`` asked for); τ is set so that some tokens are clipped and some are not."""
    inputs = make_inputs(9 + chunk)
    _, states, _ = scan("reference", inputs, dtype=F64, grads=False, objective=objective,
                        chunk_size=chunk, position=position)
    tau = float(states[-1].surprise.median())
    compare(inputs, objective=objective, chunk_size=chunk, position=position, step=position,
            grad_clip=tau, block_v=4)


@pytest.mark.parametrize("position, step, clip", [(0, 0, None), (3, 8, None), (2, 7, 0.5)])
def test_truncate(position, step, clip):
    """``truncate=True``: every chunk but the stream's first writes from its detached start
    (step 0: the first chunk keeps its path to W_0)."""
    compare(make_inputs(12), chunk_size=5, position=position, step=step, truncate=True,
            grad_clip=clip)


def test_truncate_streaming():
    compare(make_inputs(13), splits=(7,), ref_splits=(7,), chunk_size=4, truncate=True)


def test_write_only_and_without_grad():
    """``outputs=False``: an empty ``y`` and the same state; no input needing a gradient:
    nothing saved for a backward, the same reads."""
    inputs = make_inputs(14, T=9)
    ref, ref_states, _ = scan("reference", inputs, dtype=F64, grads=False, chunk_size=2,
                              outputs=False)
    out, states, _ = scan("triton", inputs, grads=False, chunk_size=2, outputs=False)
    assert out["y"].shape == ref["y"].shape == (B, H, 0, D)
    check_state(states[0], ref_states[0])
    ref, _, _ = scan("reference", inputs, dtype=F64, grads=False, chunk_size=2)
    out, states, _ = scan("triton", inputs, grads=False, chunk_size=2)
    assert not out["y"].requires_grad
    assert_close(out["y"], ref["y"], "y", **TOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_computed_in_float32(dtype):
    inputs = {n: x.to(dtype).to(F32) for n, x in make_inputs(15, T=9).items()}
    ref, _, _ = scan("reference", inputs, dtype=F64, grads=False, chunk_size=2)
    out, states, _ = scan("triton", inputs, dtype=dtype, grads=False, chunk_size=2)
    assert out["y"].dtype == states[0].params["W"].dtype == dtype
    for key in ref:
        assert_close(out[key].to(F64), ref[key], key, rtol=1e-2, atol=1e-3)


def _request(*, memory="linear", objective="l2", optimizer="dgd", read="chunk_start",
             write="token", self_target=True, dtype=F32, grad_clip=None, dim=4):
    q = torch.zeros(1, 1, 3, dim, dtype=dtype)
    if memory == "custom":
        mem = type("Custom", (LinearMemory,), {"structure": "custom"})(dim, dim)
    else:
        mem = make_memory(memory, dim, dim, **({"hidden": 4} if memory == "mlp" else {}))
    return make_request(q, q, q, memory=mem,
                        objective=make_objective(objective), rule=make_rule(optimizer),
                        names={"memory": memory, "objective": objective, "optimizer": optimizer},
                        chunk_size=2, read=read, write=write, self_target=self_target,
                        grad_clip=grad_clip)


@pytest.mark.parametrize("case, words", [
    ({"memory": "custom"}, "structure 'custom'"),
    ({"memory": "mlp", "dim": 260}, "exceeds 256 for an mlp memory"),
    ({"objective": "huber"}, "no affine gradient"),
    ({"optimizer": "momentum"}, "structure 'momentum'"),
    ({"read": "after_write"}, "read='after_write'"),
    ({"write": "chunk"}, "write='chunk'"),
    ({"self_target": False}, "self_target=False"),
    ({"dtype": F64}, "dtype torch.float64"),
    ({"grad_clip": 1.0, "dim": 160}, "grad_clip needs every row"),
])
def test_unsupported_requests_say_why(case, words):
    request = _request(**case)
    reason = dst.dgd_self_unsupported_reason(request)
    assert reason is not None and words in reason
    with pytest.raises(ValueError, match="dgd self-target kernels"):
        dst.scan_dgd_self(request)


def test_cpu_needs_the_interpreter(monkeypatch):
    request = _request()
    assert dst.dgd_self_unsupported_reason(request) is None
    monkeypatch.delenv("TRITON_INTERPRET")
    assert "TRITON_INTERPRET=1" in dst.dgd_self_unsupported_reason(request)


# -- mlp memories -----------------------------------------------------------------------------
MLP = {"T": 9, "D": 4, "batch": 1, "heads": 2, "hidden": 6}


@pytest.mark.parametrize("memory, objective, chunk, position, clip, activation, block_h", [
    ("mlp", "l2", 3, 0, None, "gelu", 4),  # two hidden tiles of 4, the last one masked
    ("residual-mlp", "dot", 4, 2, None, "silu", None),  # an open chunk's own W_c
    ("residual-mlp", "l2", 1, 0, 1.2, "gelu", None),  # clip τ: 39% of the tokens clipped
    ("mlp", "l2", 2, 1, 0.7, "tanh", 2),  # 28% clipped
])
def test_mlp_matches_reference(memory, objective, chunk, position, clip, activation, block_h):
    compare(make_inputs(20 + chunk, **MLP), memory=memory, objective=objective,
            chunk_size=chunk, position=position, step=position, grad_clip=clip,
            memory_kwargs={"hidden": MLP["hidden"], "activation": activation}, block_h=block_h)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "identity"])
def test_mlp_activations(activation):
    compare(make_inputs(30, **{**MLP, "T": 5}), memory="mlp", chunk_size=2,
            memory_kwargs={"hidden": MLP["hidden"], "activation": activation})


def test_mlp_streaming_truncated_short_segments(monkeypatch):
    """Two calls split inside a chunk, truncated writes, checkpoint segments of 2 tokens."""
    monkeypatch.setattr(dst, "checkpoint_interval", lambda T: 2)
    compare(make_inputs(31, **MLP), memory="residual-mlp", splits=(5,), ref_splits=(5,),
            chunk_size=3, step=3, truncate=True, grad_clip=1.4,
            memory_kwargs={"hidden": MLP["hidden"]})
