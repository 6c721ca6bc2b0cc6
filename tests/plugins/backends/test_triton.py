"""The ``triton`` backend (fused kernels of the classic linear level) against ``reference``.

Run on CPU through Triton's interpreter: an autouse fixture sets ``TRITON_INTERPRET=1``
for each test only (monkeypatch), so no other test sees it — with it, ``auto`` would
pick this backend for float32 CPU scans. The flag only has to be set when a kernel is
launched: the kernels are decorated by ``triton.jit`` on first use in each mode and
call no jit function of Triton's own (``import triton`` below happens before the flag is
set, which is exactly that case).

The backend runs in float32; the reference runs in float64 on the same values, so the
errors below are the kernels' own. Tolerances, norm-wise (``‖a − e‖ ≤ rtol‖e‖ + atol``):
reads, final state and surprise rtol 1e-4, atol 1e-5; gradients w.r.t. q, k, v, the gates
and the initial W, S, Wc rtol 1e-3, atol 1e-4. Measured: about 1e-7 relative for both.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import nlframe
from nlframe.level import MemoryState
from nlframe.scan import make_memory, make_objective, make_request, make_rule, resolve_backend
from nlframe_plugins.backends.triton_backend import TritonBackend

from .scan_cases import assert_close, functional_grads, gates, qkv, random_state

pytest.importorskip("triton")

F32, F64 = torch.float32, torch.float64
TOL = {"rtol": 1e-4, "atol": 1e-5}
GRAD_TOL = {"rtol": 1e-3, "atol": 1e-4}
B, H, T, DK, DV = 2, 2, 37, 12, 10  # T = 2·16 + 5: checkpoint segments, the last one partial


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def make_inputs(seed: int, *, T: int = T, Dk: int = DK, Dv: int = DV, position: int = 0,
                batch: int = B, heads: int = H) -> dict:
    """float32-representable inputs: q, k (‖k‖ ≤ 1), v, gates θ, α, η ∈ [0, 1] with exact 0s
    and 1s, a random W0, S0 and (for an open chunk, ``position > 0``) its own Wc0."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v = qkv(gen, batch, heads, T, Dk, Dv)
    lr, decay, mom = gates(gen, (batch, heads, T))
    state = random_state(gen, "linear", batch, heads, Dk, Dv)
    out = {"q": q, "k": k, "v": v, "lr": lr, "decay": decay, "momentum": mom,
           "W0": state.params["W"], "S0": state.momentum["W"]}
    if position:
        out["Wc0"] = 0.3 * torch.randn(batch, heads, Dv, Dk, generator=gen, dtype=F64)
    return {n: x.to(F32) for n, x in out.items()}


def state_of(leaves: dict, *, chunk: int, position: int = 0, step: int = 0) -> MemoryState:
    W0 = leaves["W0"]
    return MemoryState(params={"W": W0}, opt_state={"momentum": {"W": leaves["S0"]}},
                       chunk_params={"W": leaves.get("Wc0", W0)}, position=position,
                       chunk_size=chunk, step=step)


def scan(backend: str, inputs: dict, *, dtype=F32, splits: tuple[int, ...] = (), position=0,
         step=0, grads: bool = True, **kw):
    """Scan ``inputs`` (in pieces cut at ``splits``, carrying the state); return the reads,
    the final state and the gradients of a fixed random functional of ``y`` and the
    final ``W``, ``S``, ``Wc`` w.r.t. every input."""
    leaves = {n: x.detach().to(dtype, copy=True).requires_grad_(grads) for n, x in inputs.items()}
    state = state_of(leaves, chunk=kw["chunk_size"], position=position, step=step)
    ys, cuts = [], (0, *splits, leaves["q"].shape[2])
    for lo, hi in itertools.pairwise(cuts):
        part = {n: leaves[n][:, :, lo:hi] for n in ("q", "k", "v", "lr", "decay", "momentum")}
        y, state = nlframe.memory_scan(part.pop("q"), part.pop("k"), part.pop("v"),
                                       backend=backend, state=state, **part, **kw)
        ys.append(y)
    y = torch.cat(ys, 2)
    out = {"y": y, "W": state.params["W"], "S": state.momentum["W"],
           "Wc": state.chunk_params["W"]}
    if not grads:
        return out, state, {}
    return out, state, functional_grads(out, leaves)


def compare(inputs: dict, *, splits=(), ref_splits=(), **kw) -> None:
    """``triton`` (float32) equals ``reference`` (float64): reads, final state, chunk
    bookkeeping, surprise and every gradient."""
    ref, ref_state, ref_g = scan("reference", inputs, dtype=F64, splits=ref_splits, **kw)
    out, state, g = scan("triton", inputs, splits=splits, **kw)
    for key in ref:
        assert out[key].dtype == F32
        assert_close(out[key], ref[key], key, **TOL)
    assert (state.position, state.step, state.chunk_size) == \
        (ref_state.position, ref_state.step, ref_state.chunk_size)
    assert state.surprise.shape == ref_state.surprise.shape == (B, H)
    if not splits and not ref_splits:
        assert_close(state.surprise, ref_state.surprise, "surprise", **TOL)
    for name in ref_g:
        assert_close(g[name], ref_g[name], f"d/d{name}", **GRAD_TOL)


@pytest.mark.parametrize("chunk", [1, 2, 5, 16])  # 16: T = 37 ends inside a chunk
@pytest.mark.parametrize("objective", ["l2", "dot"])
def test_matches_reference(objective, chunk):
    compare(make_inputs(chunk), objective=objective, chunk_size=chunk)


def test_streaming_split_inside_a_chunk_equals_one_pass():
    """Cut at 7 and 13 (C = 5: positions 2 and 3), the state carried between the calls,
    equals one pass, gradients through the carried state included."""
    compare(make_inputs(3), splits=(7, 13), chunk_size=5)


def test_open_chunk_start_state():
    """A state 3 tokens into a chunk of 5, with its own chunk-start W_c (and its gradient)."""
    compare(make_inputs(4, position=3), position=3, step=8, chunk_size=5)


def test_several_row_blocks(monkeypatch):
    """Rows in blocks of 4 (Dv = 10: three programs per head, the last one masked); the
    sums over blocks (‖δ‖², dq, dk, dθ, dα, dη) are summed in torch."""
    monkeypatch.setattr(TritonBackend, "block_v", 4)
    compare(make_inputs(5), chunk_size=3)


@pytest.mark.parametrize("dim", [64, 128])
def test_head_dims_64_and_128(dim):
    """Full 64- and 128-wide tiles (BK = 64, BV = 32; BK = 128, BV = 16: several programs)."""
    T_ = 5 if dim == 64 else 3
    inputs = make_inputs(6, T=T_, Dk=dim, Dv=dim, batch=1, heads=1)
    ref, _, ref_g = scan("reference", inputs, dtype=F64, objective="l2", chunk_size=2)
    out, _, g = scan("triton", inputs, objective="l2", chunk_size=2)
    for key in ref:
        assert_close(out[key], ref[key], key, **TOL)
    for name in ref_g:
        assert_close(g[name], ref_g[name], f"d/d{name}", **GRAD_TOL)


def test_without_grad_and_surprise_of_chunked():
    """No input needs a gradient: no checkpoints are kept, the same reads; the surprise is
    the chunked backend's mean ‖δ_t‖ per (B, H)."""
    inputs = make_inputs(7)
    out, state, _ = scan("triton", inputs, grads=False, chunk_size=5)
    ref, ref_state, _ = scan("chunked", inputs, grads=False, chunk_size=5)
    for key in ref:
        assert_close(out[key], ref[key], key, **TOL)
    assert_close(state.surprise, ref_state.surprise, "surprise", **TOL)
    assert not state.surprise.requires_grad


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_computed_in_float32(dtype):
    """float16 / bfloat16 in and out, float32 inside: the reads are the float64 reads of
    the rounded inputs, rounded once."""
    inputs = {n: x.to(dtype).to(F32) for n, x in make_inputs(8, T=9).items()}
    ref, _, _ = scan("reference", inputs, dtype=F64, grads=False, chunk_size=2)
    out, state, _ = scan("triton", inputs, dtype=dtype, grads=False, chunk_size=2)
    assert out["y"].dtype == state.params["W"].dtype == dtype
    for key in ref:
        assert_close(out[key].to(F64), ref[key], key, rtol=1e-2, atol=1e-3)


def _request(*, memory="linear", objective="l2", optimizer="momentum", read="after_write",
             dtype=F32, chunk=2):
    q = torch.zeros(1, 1, 3, 4, dtype=dtype)
    kw = {"hidden": 4} if memory == "mlp" else {}
    return make_request(q, q, q, memory=make_memory(memory, 4, 4, **kw),
                        objective=make_objective(objective), rule=make_rule(optimizer),
                        names={"memory": memory, "objective": objective, "optimizer": optimizer},
                        chunk_size=chunk, read=read)


@pytest.mark.parametrize("case, words", [
    ({"memory": "mlp"}, "the CMS kernels compute read='chunk_start', write='chunk'"),
    ({"read": "chunk_start"}, "read='chunk_start'"),
    ({"optimizer": "dgd"}, "read='after_write' (the kernels read at the chunk start)"),
    ({"objective": "huber"}, "no affine gradient"),
    ({"dtype": F64}, "dtype torch.float64"),
])
def test_unsupported_requests_say_why(case, words):
    reason = TritonBackend().supports(_request(**case))
    assert reason is not None and words in reason
    q = torch.zeros(1, 1, 3, 4, dtype=case.get("dtype", F32))
    kw = {k: v for k, v in case.items() if k != "dtype"}
    if case.get("memory") == "mlp":
        kw["memory_kwargs"] = {"hidden": 4}
    with pytest.raises(ValueError, match="backend 'triton' does not support") as info:
        nlframe.memory_scan(q, q, q, chunk_size=2, backend="triton", **kw)
    assert reason in str(info.value)


def test_auto_picks_it_only_where_it_can_run(monkeypatch):
    """With TRITON_INTERPRET=1, ``auto`` prefers it (priority 20) for a supported CPU
    request; without the flag and without CUDA it is unavailable and ``auto`` takes
    ``chunked``."""
    request = _request()
    assert TritonBackend().supports(request) is None
    assert resolve_backend("auto", request)[0] == "triton"
    monkeypatch.delenv("TRITON_INTERPRET")
    assert "TRITON_INTERPRET=1" in TritonBackend().supports(request)
    if not torch.cuda.is_available():
        assert "TRITON_INTERPRET=1" in TritonBackend().unavailable_reason()
        assert resolve_backend("auto", request)[0] == "chunked"


@pytest.mark.parametrize("case, words", [
    ({"memory": "mlp"}, "the CMS kernels compute read='chunk_start', write='chunk'"),
    ({"optimizer": "dgd"}, "read='after_write' (the kernels read at the chunk start)"),
    ({"read": "chunk_start"}, "read='chunk_start'")])
def test_what_the_kernels_compute_is_said_before_what_the_machine_lacks(case, words, monkeypatch):
    """Without CUDA and without the interpreter, every family still names the modes its
    kernels do not compute (the matrix of ``nlframe backends list``), not only the device."""
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert words in TritonBackend().supports(_request(**case))
