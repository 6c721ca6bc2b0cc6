"""``nlframe bench model``: JSON records of a tiny run, clean errors, failure statuses."""

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from nlframe.bench.model import (
    add_ratios,
    is_oom,
    shown_status,
    status_of_exception,
    status_of_returncode,
)
from nlframe.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "specs" / "transformer-tiny.toml")


def test_bench_model_json_records():
    r = CliRunner().invoke(main, ["bench", "model", TINY, "--seq-len", "16", "--batch-size", "1",
                                  "--steps", "1", "--threads", "1", "--json"])
    assert r.exit_code == 0, r.output
    out = r.stdout  # the header and progress lines go to stderr (mixed in under click < 8.2)
    assert re.search(r"matmul peak [0-9.]+ GFLOP/s, memory bandwidth [0-9.]+ GB/s", r.output)
    records = json.loads(out[out.index("[\n"):])
    assert len(records) == 1
    rec = records[0]
    assert rec["status"] == "ok", rec
    assert rec["spec"] == "transformer-tiny" and rec["batch_size"] == 1 and rec["seq_len"] == 16
    assert rec["params"] > 0
    for key in ("forward_tok_s", "train_tok_s", "peak_rss_mb", "forward_gflop", "train_gflop",
                "train_gflop_s", "peak_gflop_s", "bandwidth_gb_s", "train_pct_of_peak"):
        assert rec[key] > 0, (key, rec)
    assert rec["flops_from"] == "counted"
    # a transformer has no scan levels: its row is of no backend, with no ratio to itself
    assert rec["levels"] == {} and rec["backend"] is None, rec
    assert rec["train_vs_chunked"] is None and rec["forward_vs_chunked"] is None, rec
    # one train step = forward + backward (about twice the forward) + the optimizer step
    assert 2.5 * rec["forward_gflop"] < rec["train_gflop"] < 4 * rec["forward_gflop"], rec
    assert rec["train_gflop_s"] == pytest.approx(
        rec["train_gflop"] * rec["train_tok_s"] / (rec["batch_size"] * rec["seq_len"]))
    assert rec["peak_rss_delta_mb"] >= 0
    assert rec["peak_rss_mb"] >= rec["build_rss_mb"] > 0


def test_bench_model_missing_spec_is_one_clean_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nlframe", "bench", "model",
                           str(tmp_path / "nope.toml"), "--quick"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(err.splitlines()) == 1 and err.startswith("error:") and "nope.toml" in err


def test_failure_statuses():
    assert status_of_returncode(-signal.SIGKILL, "") == "killed (out of memory?)"
    assert status_of_returncode(1, "Traceback...\nValueError: boom\n") == "error: ValueError: boom"
    assert status_of_returncode(-signal.SIGSEGV, "").startswith("killed by signal SIGSEGV")
    assert is_oom(MemoryError()) and status_of_exception(MemoryError()) == "OOM"
    assert status_of_exception(RuntimeError("DefaultCPUAllocator: can't allocate memory")) == "OOM"
    st = status_of_exception(ValueError("first line\nsecond line"))
    assert st == "error: ValueError: first line"
    assert shown_status({"status": "OOM", "failed_phase": "train"}) == "OOM (in train)"


def test_bench_model_rows_per_backend_name_the_backends_that_ran():
    """``--backends``: a row per backend; ``levels`` counts which backend ran each scan."""
    titans = str(ROOT / "specs" / "titans-tiny.toml")
    r = CliRunner().invoke(main, ["bench", "model", titans, "--quick", "--batch-size", "1",
                                  "--threads", "1", "--mode", "forward", "--backends",
                                  "reference", "chunked", "--json"])
    assert r.exit_code == 0, r.output
    out = r.stdout
    records = json.loads(out[out.index("[\n"):])
    assert [rec["backend"] for rec in records] == ["reference", "chunked"]
    for rec in records:
        assert rec["status"] == "ok", rec
        assert set(rec["levels"]) == {rec["backend"]} and rec["levels"][rec["backend"]] > 0
        assert rec["forward_gflop"] > 0 and rec["flops_from"] == "counted"
    reference, chunked = records
    assert reference["forward_vs_reference"] == 1.0 and chunked["forward_vs_chunked"] == 1.0
    assert chunked["forward_vs_reference"] == pytest.approx(
        chunked["forward_tok_s"] / reference["forward_tok_s"])
    assert chunked["train_vs_reference"] is None  # --mode forward: no training rows


def test_add_ratios_divide_by_the_same_spec_and_length_and_borrow_the_eager_count():
    def row(backend, T, fwd, train, **kw):
        return dict(spec="s", seq_len=T, batch_size=2, backend=backend, status="ok",
                    forward_tok_s=fwd, train_tok_s=train, **kw)

    rows = [row("chunked", 8, 400.0, 100.0, forward_gflop=1.0, train_gflop=3.0,
                forward_gflop_s=25.0, train_gflop_s=18.75, flops_from="counted"),
            row("compiled", 8, 800.0, 200.0, forward_gflop=None, train_gflop=None),
            row("reference", 8, 40.0, 10.0),
            row("chunked", 16, 300.0, 50.0)]
    add_ratios(rows, peak_gflop_s=100.0)
    chunked, compiled, reference, other = rows
    assert chunked["train_vs_reference"] == 10.0 and chunked["train_vs_chunked"] == 1.0
    assert compiled["forward_vs_chunked"] == 2.0 and compiled["forward_vs_reference"] == 20.0
    assert reference["train_vs_chunked"] == 0.1
    assert other["train_vs_reference"] is None and other["forward_vs_chunked"] == 1.0
    # 3 GFLOP per step of 2 × 8 tokens at 200 tok/s = 37.5 GFLOP/s
    assert compiled["train_gflop"] == 3.0 and compiled["train_gflop_s"] == pytest.approx(37.5)
    assert compiled["flops_from"].startswith("chunked")
    assert compiled["train_pct_of_peak"] == pytest.approx(37.5)
    assert chunked["forward_pct_of_peak"] == pytest.approx(25.0)
    assert reference["train_pct_of_peak"] is None  # no count: no rate


def test_bench_model_unknown_backend_lists_the_registered_ones():
    r = CliRunner().invoke(main, ["bench", "model", TINY, "--quick", "--backends", "nope"])
    assert r.exit_code == 2
    assert "unknown backend 'nope'; registered:" in r.output and "chunked" in r.output


def test_bench_train_times_the_specs_own_optimizers():
    """``nlframe bench train`` times :func:`nlframe.bench.lm_train_step` with the spec's
    optimizers: one row per model, and the timed steps move the weights."""
    from nlframe.bench import lm_train_step
    from nlframe.build import build
    from nlframe.optim import build_optimizers
    from nlframe.spec import load_spec

    r = CliRunner().invoke(main, ["bench", "train", "--quick", "--models", "transformer-tiny"])
    assert r.exit_code == 0, r.output
    assert re.search(r"\| transformer-tiny \| 824,448 \| [0-9,]+ \| [0-9.]+ \|", r.output), r.output
    spec = load_spec(TINY)
    model = build(spec, seed=0)
    opts = build_optimizers(model, spec.train)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tokens = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(0))
    lm_train_step(model, {"tokens": tokens[:, :-1], "targets": tokens[:, 1:]}, opts)
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) == len(before), set(before) - set(moved)
