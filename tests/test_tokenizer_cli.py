"""``nlframe tokenizer train/show`` and a run on ``tokens:PATH``: train, eval, generate, errors."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from nlframe.cli import main
from tests.plugins.data.test_tokenized import write_corpus
from tests.test_train import tiny_spec

VOCAB = 300


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NLFRAME_CACHE_DIR", str(tmp_path / "cache"))


def run(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in r.output, r.output
    return r


def train_tokenizer(tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    r = run("tokenizer", "train", f"text:{corpus}", "--vocab", VOCAB, "--out", tmp_path / "tok")
    assert r.exit_code == 0, r.output
    return corpus, tmp_path / "tok"


def test_train_writes_tokenizer_and_info_and_show_prints_the_override(tmp_path):
    corpus, tok = train_tokenizer(tmp_path)
    info = json.loads((tok / "nlframe-tokenizer.json").read_text())
    assert info["source"] == f"text:{corpus}" and info["vocab_size"] == VOCAB
    assert len(info["corpus_sha256"]) == len(info["tokenizer_sha256"]) == 64
    assert (tok / "tokenizer.json").is_file()
    r = run("tokenizer", "show", tok)
    assert r.exit_code == 0 and f"vocab_size: {VOCAB}" in r.output
    assert f"model.vocab_size={VOCAB}" in r.output and f"tokens:{corpus}" in r.output
    shown = json.loads(run("tokenizer", "show", tok, "--json").output)
    assert shown["vocab_size"] == VOCAB and shown["sha256"] == info["tokenizer_sha256"]


def test_train_refuses_bad_inputs(tmp_path):
    corpus, tok = train_tokenizer(tmp_path)
    r = run("tokenizer", "train", f"text:{tmp_path / 'nope'}", "--out", tmp_path / "t2")
    assert r.exit_code == 1 and "nope' does not exist" in r.output
    r = run("tokenizer", "train", f"text:{corpus}", "--vocab", 256, "--out", tmp_path / "t2")
    assert r.exit_code == 2 and "at least 257" in r.output
    r = run("tokenizer", "train", "mqar", "--out", tmp_path / "t2")
    assert r.exit_code == 1 and "not a text source" in r.output
    assert not (tmp_path / "t2").exists()
    before = (tok / "tokenizer.json").read_bytes()
    r = run("tokenizer", "train", f"text:{corpus}", "--vocab", 280, "--out", tok)
    assert r.exit_code == 1 and "--overwrite" in r.output
    assert (tok / "tokenizer.json").read_bytes() == before
    r = run("tokenizer", "train", f"text:{corpus}", "--vocab", 280, "--out", tok, "--overwrite")
    assert r.exit_code == 0 and "vocab_size 280" in r.output
    r = run("tokenizer", "show", tmp_path / "missing")
    assert r.exit_code == 1 and "does not exist" in r.output


def test_run_on_tokens_trains_evaluates_and_generates_text(tmp_path):
    corpus, tok = train_tokenizer(tmp_path)
    spec, out = tiny_spec(tmp_path, steps=3), tmp_path / "run"
    data = ["--data", f"tokens:{corpus}", "--option", f"tokenizer={tok}", "--no-progress"]
    r = run("train", spec, "--out", out, *data)
    assert r.exit_code == 1 and f"set model.vocab_size={VOCAB}" in r.output
    r = run("train", spec, f"model.vocab_size={VOCAB}", "--out", out, "--overwrite", *data)
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(x["train/loss"]) for x in rows if "train/loss" in x)
    meta = json.loads((out / "checkpoint" / "meta.json").read_text())
    assert meta["data_source"]["tokenizer"]["path"] == str((tok / "tokenizer.json").resolve())
    r = run("eval", out, "--json")
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    assert math.isfinite(m["bpb"]) and m["bytes"] > m["tokens"] > 0
    r = run("eval", out, "--task", "stdlib")
    assert r.exit_code == 1 and "evaluate it on data of the same tokenizer" in r.output
    prompt = "the naïve café "
    r = run("generate", out, "--prompt", prompt, "--tokens", 12, "--temperature", 0)
    assert r.exit_code == 0 and r.output.startswith(prompt) and len(r.output) > len(prompt) + 1
    with open(tok / "tokenizer.json", "a") as f:
        f.write("\n")
    for cmd in (("generate", out, "--prompt", "x"), ("eval", out)):
        r = run(*cmd)
        assert r.exit_code == 1 and "has changed since the run was trained" in r.output
    (tok / "tokenizer.json").unlink()
    r = run("generate", out, "--prompt", "x")
    assert r.exit_code == 1 and "no longer exists" in r.output
