"""Cheap tests of the MQAR and formal-language experiments: their helpers and configs."""

import pytest

from nlframe.experiments import formal, mqar
from nlframe.experiments.base import Config, ExperimentError


@pytest.mark.parametrize("module", [mqar, formal])
@pytest.mark.parametrize("quick", [False, True])
def test_config_parses_and_is_fully_read(module, quick):
    cfg = Config.load(module.NAME, quick=quick)
    settings = module._settings(cfg)
    cfg.check_all_read()
    assert set(settings["models"]) == {"HOPE", "Titans", "DeltaNet", "Transformer"}
    assert settings["seeds"]


def test_misspelt_key_is_an_error():
    cfg = Config.load("mqar")
    cfg.data["trian"] = {"steps": 1}
    mqar._settings(cfg)
    with pytest.raises(ExperimentError, match="trian.steps"):
        cfg.check_all_read()


def test_full_formal_config_has_all_languages_and_longer_lengths():
    s = formal._settings(Config.load("formal"))
    assert s["languages"] == list(formal.LANGUAGES)
    assert s["lengths"] == [s["max_len"], 2 * s["max_len"], 4 * s["max_len"]]
    assert s["train"]["train.seq_len"] == s["max_len"] + 2


def test_best_setting_is_highest_mean_first_of_equals():
    assert mqar.best_setting({1e-3: [0.1, 0.3], 3e-3: [0.5, 0.1], 1e-2: [0.0, 0.9]}) == 1e-2
    assert mqar.best_setting({1e-3: [0.5], 3e-3: [0.5]}) == 1e-3


def test_spread_change_and_chance():
    per = {4: [0.9, 0.7], 8: [0.5, 0.5], 16: [0.2, 0.2]}
    assert mqar.spread(per) == pytest.approx(0.6)
    assert mqar.change(per) == pytest.approx(-0.6)
    assert mqar.chance(64) == pytest.approx(1 / 32)


def test_lr_findings_say_whether_recurrent_models_are_more_sensitive():
    sweep = {"HOPE": {1e-3: [0.1], 1e-2: [0.9]}, "Transformer": {1e-3: [0.8], 1e-2: [0.9]}}
    text = " ".join(mqar.lr_findings(sweep, "Transformer", 0.03))
    assert "HOPE 0.01" in text and "more learning-rate sensitive, as the papers" in text
    flat = {"HOPE": {1e-3: [0.9], 1e-2: [0.9]}, "Transformer": {1e-3: [0.1], 1e-2: [0.9]}}
    assert "not more sensitive" in " ".join(mqar.lr_findings(flat, "Transformer", 0.03))
    low = {"HOPE": {1e-3: [0.01]}, "Transformer": {1e-3: [0.02]}}
    assert "not learnt" in " ".join(mqar.lr_findings(low, "Transformer", 0.03))


def test_ranking_finding_compares_lead_with_std():
    clear = mqar.ranking_finding({"A": [0.9, 0.91], "B": [0.5, 0.52]}, "Here")
    assert clear.startswith("Here, the best model is A") and "more than the seeds' std" in clear
    noisy = mqar.ranking_finding({"A": [0.9, 0.5], "B": [0.6, 0.7]}, "Here")
    assert "not more than the seeds' std" in noisy


def test_trend_finding_counts_models_and_compares_with_baseline():
    per = {"HOPE": {4: [0.9], 16: [0.2]}, "Transformer": {4: [0.9], 16: [0.8]}}
    text = mqar.trend_finding(per, "Transformer", "number of pairs", "X", worse_with_x=True)
    assert "falls for 2 of 2 models" in text and "more affected than Transformer's." in text
    text = mqar.trend_finding(per, "Transformer", "width", "X", worse_with_x=False)
    assert "rises for 0 of 2" in text and "does not agree" in text


def test_series_transposes_per_seed_values():
    xs, per_seed = mqar.series({"A": {1: [0.1, 0.2], 2: [0.3, 0.4]}})["A"]
    assert xs == [1, 2] and per_seed == [[0.1, 0.3], [0.2, 0.4]]


def test_majority_and_drop():
    assert formal.majority([2, 2, 3, 2]) == 0.75
    with pytest.raises(ExperimentError):
        formal.majority([])
    assert formal.drop({32: [0.5], 16: [0.9, 0.9]}) == pytest.approx(0.4)


def test_formal_findings_from_fake_numbers():
    acc = {"parity": {"HOPE": {16: [1.0, 1.0], 64: [0.95, 0.97]},
                      "Transformer": {16: [0.9, 0.9], 64: [0.5, 0.52]}}}
    base = {"parity": {16: 0.5, 64: 0.5}}
    text = " ".join(formal.findings(acc, base, "Transformer"))
    assert "best is HOPE" in text and "Learnt" in text and "HOPE, Transformer" in text
    assert "loses more than the recurrent models on average, which agrees" in text
    assert "a recurrent model, as the papers report" in text
    chance = {"parity": {"HOPE": {16: [0.5], 64: [0.5]}, "Transformer": {16: [0.5], 64: [0.5]}}}
    text = " ".join(formal.findings(chance, base, "Transformer"))
    assert "not learnt" in text and "cannot be compared with the papers" in text
    assert "loses more" not in text
