"""Experiments 4 (niah) and 6 (continual): pure helpers and configurations (nothing trained)."""

from __future__ import annotations

import re

import pytest

from nlframe.experiments import continual, niah
from nlframe.experiments.base import Config, ExperimentError


def test_forgetting_is_best_earlier_minus_final():
    after = [[0.9, 0.1, 0.1],
             [0.5, 0.8, 0.1],
             [0.3, 0.6, 0.9]]
    assert continual.forgetting(after) == pytest.approx([0.6, 0.2])
    assert continual.forgetting([[0.2, 0.1], [0.4, 0.9]]) == pytest.approx([-0.2])


def test_continual_findings_name_the_least_forgetting_model():
    keep = [[[0.9, 0.1], [0.85, 0.9]]] * 2
    lose = [[[0.9, 0.1], [0.1, 0.9]], [[0.8, 0.1], [0.2, 0.9]]]
    text = " ".join(continual.findings({"HOPE": keep, "Titans": lose}, chance=1 / 16))
    assert "HOPE forgets least" in text and "larger" in text and "agrees" in text
    text = " ".join(continual.findings({"HOPE": lose, "Titans": keep}, chance=1 / 16))
    assert "Titans forgets least" in text and "does not show" in text
    assert "HOPE: 90% on the last phase, 15% on phase 0" in text


def _fake(em_first, em_last, mb_first, mb_last):
    return {"exact_match": [[em_first, em_last]] * 2, "accuracy": [[1.0, 1.0]] * 2,
            "peak_mb": [[mb_first, mb_last]] * 2, "single": [[1.0]] * 2, "stress": [[0.5]] * 2}


def test_niah_findings_from_fake_numbers():
    acc = {"HOPE": _fake(1.0, 0.97, 10, 12), "Transformer": _fake(1.0, 0.0, 10, 500)}
    text = " ".join(niah.findings(acc, [1024, 1 << 20], [1024], 4, chunk=1024))
    assert "At 1M tokens HOPE is best (97%" in text and "agrees with the papers" in text
    assert "Transformer: exact match falls from 100% at 1K to 0% at 1M" in text
    assert "HOPE: exact match holds" in text
    assert "grows from 1K to 1M tokens for Transformer (10 → 500 MiB)" in text
    assert "HOPE with 4 needles: 50% exact match vs 100% with one" in text


def test_niah_findings_say_when_nothing_was_learnt():
    acc = {m: _fake(0.0, 0.0, 0.0, 1.0) for m in ("HOPE", "Transformer")}
    for a in acc.values():
        a["accuracy"] = [[0.12, 0.1]] * 2
        a["peak_mb"] = [[0.0, 128.0, 129.0]] * 2  # the first, short haystack uses a smaller piece
    text = " ".join(niah.findings(acc, [1024, 4096, 1 << 20], [1024], 4, chunk=4096))
    assert "No model learnt to retrieve" in text and "12–12% (chance 10%)" in text
    assert "is best" not in text
    assert "stays flat from 4K to 1M tokens" in text


def test_memory_finding_flat():
    assert "stays flat" in niah.memory_finding({"A": [[5.0, 20.0]]}, [1024, 4096])


@pytest.mark.parametrize("name", ["niah", "continual"])
@pytest.mark.parametrize("quick", [False, True])
def test_config_parses_and_is_fully_read(name, quick, monkeypatch):
    module = {"niah": niah, "continual": continual}[name]
    cfg = Config.load(name, quick=quick)

    class Stop(Exception):
        pass

    def stop():
        Config.check_all_read(cfg)
        raise Stop

    monkeypatch.setattr(cfg, "check_all_read", stop)
    with pytest.raises(Stop):
        module.run(None, cfg)  # reads every key, checks, stops before any training
    for m in niah.model_table(cfg).values():
        assert (cfg.directory / m["spec"]).is_file()


def test_bad_lengths_are_an_error(tmp_path):
    (tmp_path / "niah.toml").write_text(
        re.sub(r"\nrows = \[[0-9, ]+\]", "\nrows = [8, 4]",
               (Config.load("niah").directory / "niah.toml").read_text(), count=1))
    with pytest.raises(ExperimentError, match="eval.rows as many"):
        niah.run(None, Config.load("niah", directory=tmp_path))
