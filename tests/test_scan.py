"""``memory_scan`` input validation: every bad input names the argument and what was seen."""

from __future__ import annotations

import json
import re

import pytest
import torch

import nlframe
from nlframe.level import MemoryState

B, H, T, DK, DV = 1, 2, 5, 3, 4


@pytest.fixture
def qkv():
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(B, H, T, DK, generator=gen), torch.randn(B, H, T, DK, generator=gen),
            torch.randn(B, H, T, DV, generator=gen))


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_good_input_runs(qkv, backend):
    y, state = nlframe.memory_scan(*qkv, backend=backend)
    assert y.shape == (B, H, T, DV) and state.params["W"].shape == (B, H, DV, DK)
    assert state.position == 0 and state.step == T


@pytest.mark.parametrize("which,bad,exc,pattern", [
    ("q", [[1.0]], TypeError, r"q must be a torch.Tensor, got list"),
    ("q", torch.randn(H, T, DK), ValueError, r"q must have shape \(B, H, T, D\), got \(2, 5, 3\)"),
    ("k", torch.randn(B, H, T, DK + 1), ValueError, r"q and k must have the same shape.*\(1, 2, 5, 3\).*\(1, 2, 5, 4\)"),
    ("v", torch.randn(B, H, T + 1, DV), ValueError, r"v must share \(B, H, T\) with k; got v \(1, 2, 6, 4\)"),
    ("v", torch.randn(B, H, T, DV, dtype=torch.float64), TypeError, r"q, k, v must share a dtype.*float64"),
    ("q", torch.ones(B, H, T, DK, dtype=torch.long), TypeError, r"q must be a floating tensor, got dtype torch.int64"),
    ("k", torch.randn(B, H, T, DK, device="meta"), ValueError, r"one device; got cpu, meta, cpu"),
])
def test_bad_tensors(qkv, which, bad, exc, pattern):
    args = dict(zip("qkv", qkv))
    args[which] = bad
    with pytest.raises(exc, match=pattern):
        nlframe.memory_scan(args["q"], args["k"], args["v"])


@pytest.mark.parametrize("chunk", [0, -3, 1.5, True, "2"])
def test_bad_chunk_size(qkv, chunk):
    with pytest.raises(ValueError, match=f"chunk_size must be a positive int, got {chunk!r}"):
        nlframe.memory_scan(*qkv, chunk_size=chunk)


@pytest.mark.parametrize("gate", ["lr", "decay", "momentum"])
@pytest.mark.parametrize("value,exc,pattern", [
    (torch.rand(B, H, T + 1), ValueError, r"shape \(B, H, T\) = \(1, 2, 5\).*got shape \(1, 2, 6\)"),
    (torch.rand(H, T), ValueError, r"got shape \(2, 5\)"),
    (torch.rand(B, H, T, 1), ValueError, r"got shape \(1, 2, 5, 1\)"),
    (torch.ones(B, H, T, dtype=torch.long), TypeError, r"floating tensor, got dtype torch.int64"),
    (torch.rand(B, H, T, device="meta"), ValueError, r"is on meta but q is on cpu"),
    ("0.1", TypeError, r"must be a float or a \(B, H, T\) tensor, got str"),
])
def test_bad_gates(qkv, gate, value, exc, pattern):
    with pytest.raises(exc, match=f"^{gate} .*{pattern}"):
        nlframe.memory_scan(*qkv, **{gate: value})


def test_gates_broadcast_from_size_one_dims(qkv):
    lr = torch.rand(1, 1, T)
    y1, _ = nlframe.memory_scan(*qkv, lr=lr)
    y2, _ = nlframe.memory_scan(*qkv, lr=lr.expand(B, H, T).clone())
    assert torch.equal(y1, y2)


@pytest.mark.parametrize("kw,pattern", [
    ({"decay": 1.5}, r"optimizer 'momentum': decay must be in \[0, 1\], got 1.5"),
    ({"momentum": -0.1}, r"momentum must be in \[0, 1\], got -0.1"),
    ({"lr": -1.0}, r"lr must be >= 0, got -1.0"),
])
def test_hyperparameter_ranges(qkv, kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        nlframe.memory_scan(*qkv, **kw)


@pytest.mark.parametrize("kind,name,listed", [
    ("memory", "lineer", "linear, mlp, module, residual-mlp"), ("objective", "l3", "dot, huber, l2, lp"),
    ("optimizer", "momentun", "momentum"), ("backend", "fast", "chunked, compiled, reference, triton")])
def test_unknown_plugin_names(qkv, kind, name, listed):
    with pytest.raises(ValueError, match=f"unknown {kind} '{name}'.*{listed}"):
        nlframe.memory_scan(*qkv, **{kind: name})


def test_bad_plugin_options(qkv):
    with pytest.raises(ValueError, match="dim_k == dim_v.*dim_k=3, dim_v=4"):
        nlframe.memory_scan(*qkv, memory="residual-mlp", chunk_size=2)
    with pytest.raises(ValueError, match="delta must be a number > 0"):
        nlframe.memory_scan(*qkv, objective="huber", objective_kwargs={"delta": 0.0})
    with pytest.raises(ValueError, match="p must be a number >= 1"):
        nlframe.memory_scan(*qkv, objective="lp", objective_kwargs={"p": 0.5})
    with pytest.raises(TypeError, match="unknown option.*'depth'"):
        nlframe.memory_scan(*qkv, memory="mlp", memory_kwargs={"depth": 3})


def test_bad_states(qkv):
    q, k, v = qkv
    _, state = nlframe.memory_scan(q, k, v, chunk_size=3)
    with pytest.raises(TypeError, match="state must be a MemoryState or None, got dict"):
        nlframe.memory_scan(q, k, v, state={"W": 0})
    q2, k2, v2 = (torch.cat([x, x]) for x in qkv)
    with pytest.raises(ValueError, match=r"state.params\['W'\] has shape \(1, 2, 4, 3\); expected \(2, 2, 4, 3\)"):
        nlframe.memory_scan(q2, k2, v2, state=state, chunk_size=3)
    with pytest.raises(TypeError, match=r"state.params\['W'\] has dtype torch.float32 but q has torch.float64"):
        nlframe.memory_scan(q.double(), k.double(), v.double(), state=state, chunk_size=3)
    with pytest.raises(ValueError, match="2 tokens into a chunk of size 3; cannot continue it with chunk_size=4"):
        nlframe.memory_scan(q, k, v, state=state, chunk_size=4)
    broken = MemoryState(params=state.params, opt_state={"momentum": {"W": torch.zeros(3, 3)}},
                         chunk_params=state.params)
    with pytest.raises(ValueError, match=r"state.opt_state\['momentum'\]\['W'\] has shape \(3, 3\); expected \(1, 2, 4, 3\)"):
        nlframe.memory_scan(q, k, v, state=broken)
    with pytest.raises(ValueError, match=r"state.params lacks 'W1'"):
        nlframe.memory_scan(q, k, v, memory="mlp", state=state, chunk_size=3)


def test_explicit_backend_refusal_names_the_reason(qkv):
    with pytest.raises(ValueError, match=r"backend 'chunked' does not support this scan "
                                         r"\(memory='mlp'.*chunk_size=1.*nonlinear"):
        nlframe.memory_scan(*qkv[:2], qkv[0], memory="mlp", chunk_size=1, backend="chunked")


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_empty_inputs(qkv, backend):
    q, k, v = qkv
    y, state = nlframe.memory_scan(q[:, :, :0], k[:, :, :0], v[:, :, :0], backend=backend)
    assert y.shape == (B, H, 0, DV) and state.step == 0 and not state.params["W"].any()
    y, state = nlframe.memory_scan(q[:0], k[:0], v[:0], backend=backend)
    assert y.shape == (0, H, T, DV)


def test_non_finite_read_names_the_token(qkv):
    q, k, v = qkv
    q = q.clone()
    q[0, 1, 3, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite read at token 3"):
        nlframe.memory_scan(q, k, v)


def test_scan_benchmark_smoke(capsys):
    """``nlframe bench scan`` times every backend asked for, side by side, and prints its
    table; ``--json`` gives one record per backend and mode with its ratios."""
    from nlframe.bench.scan import main, useful_flops

    assert main(["--quick", "--backends", "chunked", "reference"]) == 0
    out = capsys.readouterr().out
    assert "| backend | mode | B | H | T | D | tok/s | × reference | × chunked |" in out
    assert re.search(r"matmul peak [0-9.]+ GFLOP/s, memory bandwidth [0-9.]+ GB/s", out)
    assert "| chunked | forward | 1 | 4 | 64 | 16 |" in out
    assert "| reference | train | 1 | 4 | 64 | 16 |" in out
    assert main(["--quick", "--backends", "chunked", "reference", "--mode", "forward",
                 "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert {(r["backend"], r["mode"]) for r in records} == {("chunked", "forward"),
                                                            ("reference", "forward")}
    ref = next(r for r in records if r["backend"] == "reference")
    assert ref["vs_reference"] == 1.0 and ref["counted_gflop"] > 0
    assert all(r["bandwidth_gb_s"] > 0 and r["peak_gflop_s"] > 0 for r in records)
    assert ref["useful_gflop"] == useful_flops("linear", 16, 16, 0) * 4 * 64 / 1e9
    assert useful_flops("mlp", 4, 4, 8) == 4 * 2 * (4 * 8 + 8 * 4)


def test_memory_bandwidth_counts_three_buffers_per_add(monkeypatch):
    """STREAM's add moves ``a``, ``b`` and ``c``: ``3 · mib`` MiB per timed call."""
    from nlframe.bench import scan

    assert scan.memory_bandwidth_gb_s(torch.device("cpu"), mib=1) > 0  # a real timing
    calls = []

    def fake_best_time(fn, repeats):
        fn()  # the timed call runs the add
        calls.append(repeats)
        return 0.5

    monkeypatch.setattr(scan, "best_time", fake_best_time)
    rate = scan.memory_bandwidth_gb_s(torch.device("cpu"), mib=2, repeats=4)
    assert calls == [4]
    assert rate == pytest.approx(3 * 2 * 2**20 / 0.5 / 1e9)


def test_scan_benchmark_names_unknown_backends(capsys):
    from nlframe.bench.scan import main

    with pytest.raises(SystemExit):
        main(["--quick", "--backends", "nope"])
    assert "registered:" in capsys.readouterr().err

def test_scan_benchmark_says_when_no_backend_runs_the_workload(capsys):
    from nlframe.bench.scan import main

    assert main(["--quick", "--backends", "chunked", "--memory", "mlp", "--chunk-size", "1"]) == 0
    out = capsys.readouterr().out
    assert "chunked skipped: an MLP memory read after momentum writes with chunk_size=1" in out
    assert "no backend asked for runs this workload" in out


def test_truncate_needs_chunk_start_reads(qkv):
    with pytest.raises(ValueError, match="truncate=True needs read='chunk_start'"):
        nlframe.memory_scan(*qkv, truncate=True)


def test_truncate_without_grad_runs_the_full_form(monkeypatch):
    """Under ``no_grad`` a truncated scan hands its backend the full form: the values are
    the same, and the detached starts and zero-valued read corrections only shape a
    gradient that is never formed. The modes are still checked."""
    from nlframe import scan

    seen = []
    resolve = scan.resolve_backend
    monkeypatch.setattr(scan, "resolve_backend",
                        lambda name, request: seen.append(request.truncate) or resolve(name, request))
    gen = torch.Generator().manual_seed(0)
    q, k, v = (0.5 * torch.randn(2, 2, 24, 4, generator=gen) for _ in range(3))
    kw = dict(memory="mlp", memory_kwargs={"hidden": 8}, chunk_size=4, read="chunk_start",
              write="chunk", truncate=True, backend="chunked", lr=0.05)
    y_grad, s_grad = nlframe.memory_scan(q, k, v.requires_grad_(), **kw)
    with torch.no_grad():
        y, s = nlframe.memory_scan(q, k, v, **kw)
        with pytest.raises(ValueError, match="truncate=True needs read='chunk_start'"):
            nlframe.memory_scan(q, k, v, truncate=True)
    assert seen == [True, False]
    torch.testing.assert_close(y, y_grad.detach())
    for name, w in s.params.items():
        torch.testing.assert_close(w, s_grad.params[name].detach())


def test_scan_benchmark_workload_stays_finite_for_the_mlp_memory():
    """The benchmark's MLP workload (θ up to 0.5, momentum up to 0.9) keeps finite reads:
    with values of norm √D it diverged, and the timed rows computed on NaNs."""
    from nlframe.bench.scan import Workload, parser

    args = parser().parse_args(["--memory", "mlp", "--hidden", "64", "--dim", "32",
                                "--heads", "2", "--chunk-size", "16"])
    work = Workload(args, 1, 256, 32, torch.device("cpu"))
    assert torch.isfinite(work.output("chunked")).all()
