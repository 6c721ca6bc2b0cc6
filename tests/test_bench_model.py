"""``nlframe bench model``: JSON records of a tiny run, clean errors, failure statuses."""

import json
import signal
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from nlframe.bench.model import (
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
    records = json.loads(out[out.index("[\n"):])
    assert len(records) == 1
    rec = records[0]
    assert rec["status"] == "ok", rec
    assert rec["spec"] == "transformer-tiny" and rec["batch_size"] == 1 and rec["seq_len"] == 16
    assert rec["params"] > 0
    for key in ("forward_tok_s", "train_tok_s", "peak_rss_mb"):
        assert rec[key] > 0, (key, rec)
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


def test_bench_model_unknown_backend_lists_the_registered_ones():
    r = CliRunner().invoke(main, ["bench", "model", TINY, "--quick", "--backends", "nope"])
    assert r.exit_code == 2
    assert "unknown backend 'nope'; registered:" in r.output and "chunked" in r.output
