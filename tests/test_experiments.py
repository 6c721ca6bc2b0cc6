"""``nlframe experiments``: the framework (configs, cache, statistics, page), the
reading experiment's measurements against direct computations, and every
experiment end to end at ``--quick`` size (the pipeline, not the numbers)."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from nlframe.cli import main
from nlframe.experiments import EXPERIMENTS, ExperimentError, get_experiment, resolve
from nlframe.experiments.base import Config, Workspace, fmt, mean_std, toml_value
from nlframe.experiments.page import anchor
from nlframe.experiments.reading import (bucket_edges, bucketed_bpb, held_out_documents,
                                         position_nll, windowed_nll)


# -- configuration ------------------------------------------------------------------
def _write(tmp_path, text, name="demo"):
    (tmp_path / f"{name}.toml").write_text(text)
    return tmp_path


def test_config_merges_quick_and_reads_paths(tmp_path):
    d = _write(tmp_path, "seeds = 3\n[train]\nsteps = 100\nlr = 0.01\n[quick]\nseeds = 1\n"
                         "train = { steps = 2 }\n")
    full, quick = Config.load("demo", directory=d), Config.load("demo", quick=True, directory=d)
    assert full.seeds == [0, 1, 2] and full["train.steps"] == 100
    assert quick.seeds == [0] and quick["train.steps"] == 2 and quick["train.lr"] == 0.01


def test_config_unknown_and_bad_keys_are_named(tmp_path):
    d = _write(tmp_path, "seeds = 2\nstesp = 4\n[train]\nlr = 'fast'\n")
    cfg = Config.load("demo", directory=d)
    assert cfg.seeds == [0, 1]
    with pytest.raises(ExperimentError, match=r"demo.toml: train.lr: expected float"):
        cfg.typed("train.lr", float)
    with pytest.raises(ExperimentError, match=r"demo.toml: missing key 'train.steps'"):
        cfg["train.steps"]
    with pytest.raises(ExperimentError, match=r"unknown key\(s\) stesp"):
        cfg.check_all_read()
    with pytest.raises(ExperimentError, match="expected >= 1"):
        Config.load("demo", directory=_write(tmp_path, "seeds = 0\n")).seeds


def test_config_errors_for_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ExperimentError, match="no configuration nothing.toml"):
        Config.load("nothing", directory=tmp_path)
    with pytest.raises(ExperimentError, match="not valid TOML"):
        Config.load("demo", directory=_write(tmp_path, "seeds = [\n"))


def test_shipped_configs_load_with_and_without_quick():
    for name in EXPERIMENTS:
        full, quick = Config.load(name), Config.load(name, quick=True)
        assert "quick" not in full.data and "quick" not in quick.data
        if "seeds" in full.data:
            assert len(full.seeds) >= 3  # every reported number from >= 3 seeds


def test_resolve_expands_all_in_page_order_and_names_valid_ones():
    assert resolve(["ablations", "all"]) == list(EXPERIMENTS)
    assert resolve(["lm", "reading"]) == ["reading", "lm"]
    with pytest.raises(ExperimentError, match="valid: reading, lm"):
        get_experiment("nope")


def test_toml_value_round_trips_through_spec_overrides():
    from nlframe.spec import load_spec

    spec = load_spec("specs/hope-tiny.toml", overrides=[
        f"model.blocks[0].cms.chunk_sizes={toml_value([8, 8])}",
        f"model.blocks[0].titans.memory_rule={toml_value('momentum')}"])
    assert spec.model.config.blocks[0].config.cms.chunk_sizes == (8, 8)


# -- statistics and cache -----------------------------------------------------------------
def test_mean_std_is_the_sample_statistics():
    v = [2.0, 4.0, 9.0]
    assert mean_std(v) == pytest.approx((statistics.fmean(v), statistics.stdev(v)))
    assert mean_std([1.5]) == (1.5, 0.0)
    assert all(math.isnan(x) for x in mean_std([float("nan")]))
    assert fmt([0.5, 0.7], percent=True) == "60.0 ± 14.1%"
    assert fmt([]) == "—"


def test_unit_is_computed_once_per_key(tmp_path):
    ws = Workspace(tmp_path / "out", echo=lambda m: None)
    calls = []

    def compute():
        calls.append(1)
        return {"x": len(calls)}

    assert ws.unit("k", {"a": 1}, compute) == {"x": 1}
    assert ws.unit("k", {"a": 1}, compute) == {"x": 1}
    assert ws.unit("k", {"a": 2}, compute) == {"x": 2}
    assert len(calls) == 2
    assert (ws.work / ".gitignore").read_text().strip().endswith("*")


def test_anchor_matches_the_toc_extension():
    assert anchor("Ablations of HOPE") == "ablations-of-hope"
    assert anchor("Learning while reading: loss, far") == "learning-while-reading-loss-far"


# -- the reading experiment's measurements -----------------------------------------------
def test_bucket_edges_cover_the_document():
    e = bucket_edges(1000, 2)
    assert e[0] == 0 and e[-1] == 1000 and e[1] == 16 and e == sorted(set(e))
    assert e[2] == 23 and e[3] == 32  # two buckets per doubling


def test_position_nll_streamed_equals_one_pass():
    """The streamed per-position loss of a state-carrying model equals one whole-sequence
    pass computed with plain cross-entropy."""
    import nlframe
    from nlframe.spec import load_spec

    model = nlframe.build(load_spec("specs/deltanet-tiny.toml"), seed=0).eval()
    docs = torch.randint(0, 256, (2, 97), generator=torch.Generator().manual_seed(0))
    total = position_nll(model, docs, stream_chunk=32)
    with torch.no_grad():
        logits, _ = model(docs[:, :-1])
        want = F.cross_entropy(logits.transpose(1, 2), docs[:, 1:], reduction="none").sum(0)
    np.testing.assert_allclose(total, want.double().numpy(), rtol=1e-4, atol=1e-5)
    edges = [0, 16, 96]
    bpb = bucketed_bpb(total, 2, edges)
    assert bpb[1] == pytest.approx(float(want[16:].mean()) / 2 / math.log(2), rel=1e-4)


def test_windowed_nll_reads_every_window_from_a_fresh_state():
    import nlframe
    from nlframe.spec import load_spec

    model = nlframe.build(load_spec("specs/deltanet-tiny.toml"), seed=0).eval()
    docs = torch.randint(0, 256, (2, 97), generator=torch.Generator().manual_seed(1))
    got = windowed_nll(model, docs, window=32, batch=3)
    want = np.zeros(96)
    with torch.no_grad():
        for a in range(0, 96, 32):  # each window alone, from no state
            logits, _ = model(docs[:, a:a + 32])
            want[a:a + 32] = F.cross_entropy(logits.transpose(1, 2), docs[:, a + 1:a + 33],
                                             reduction="none").sum(0).double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[:32], position_nll(model, docs, 16)[:32], rtol=1e-4, atol=1e-5)
    with pytest.raises(ExperimentError, match="not a multiple"):
        windowed_nll(model, docs, window=40)


def test_held_out_documents_are_validation_files():
    names, docs = held_out_documents(2, 300)
    assert docs.shape == (2, 301) and docs.dtype == torch.int64
    from nlframe_plugins.data.corpus import split_files
    import sysconfig
    from pathlib import Path
    from nlframe_plugins.data.stdlib import stdlib_files

    root = Path(sysconfig.get_paths()["stdlib"])
    train, val = split_files(stdlib_files(root), 0.05)
    assert set(names) <= set(val) and not set(names) & set(train)
    assert bytes(docs[0].tolist()) == (root / names[0]).read_bytes()[:301]
    with pytest.raises(ExperimentError, match="held-out files are longer"):
        held_out_documents(10_000, 300)


# -- end to end ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("results") / "results"
    runner = CliRunner()
    first = runner.invoke(main, ["experiments", "run", "all", "--quick", "--out", str(out),
                                 "--no-progress"])
    recorded = {n: (out / n / "results.json").read_text() for n in EXPERIMENTS
                if (out / n / "results.json").is_file()}
    second = runner.invoke(main, ["experiments", "run", "all", "--quick", "--out", str(out),
                                  "--no-progress"])
    return out, first, second, recorded


def test_quick_run_writes_every_section(quick_results):
    out, first, _, _ = quick_results
    assert first.exit_code == 0, first.output
    page = out.with_suffix(".md").read_text()
    for name in EXPERIMENTS:
        module = get_experiment(name)
        assert f"## {module.TITLE}" in page
        body = json.loads((out / name / "results.json").read_text())
        assert body["quick"] is True and body["raw"] and body["tables"] and body["figures"]
        for fig in body["figures"]:
            png = out / fig["file"]
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"(results/{fig['file']})" in page
        assert "Toy run" in page


def test_quick_rerun_reuses_every_run_and_unit(quick_results):
    out, first, second, recorded = quick_results
    assert "  train " in first.output
    assert second.exit_code == 0, second.output
    assert "  train " not in second.output  # everything came from the cache
    for name, text in recorded.items():  # ... and the first run's record is kept
        before, after = json.loads(text), json.loads((out / name / "results.json").read_text())
        assert after["seconds"] == before["seconds"] > 0
        assert after["machine"] == before["machine"] and after["machine"]["torch"]
        assert after["tables"] == before["tables"]


def test_cli_lists_and_refuses_unknown_names(tmp_path):
    runner = CliRunner()
    listed = runner.invoke(main, ["experiments", "list"])
    assert listed.exit_code == 0 and all(n in listed.output for n in EXPERIMENTS)
    bad = runner.invoke(main, ["experiments", "run", "nope", "--out", str(tmp_path / "r")])
    assert bad.exit_code != 0 and "unknown experiment 'nope'" in bad.output
    assert "Traceback" not in bad.output
