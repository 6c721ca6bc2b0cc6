"""The byte-corpus machinery: split by file, cache manifest, rebuild, atomic build, windows, bpb."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from nlframe_plugins.data import corpus as corpus_mod
from nlframe_plugins.data.corpus import open_corpus, split_files
from nlframe_plugins.data.text import text

from .conftest import Uniform, rel_err


def _tree(root, files):
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


@given(st.sets(st.text("abc/._", min_size=1, max_size=8), min_size=1, max_size=30),
       st.floats(0.01, 0.99))
def test_split_files_partitions_stably(paths, frac):
    train, val = split_files(list(paths), frac)
    assert sorted(train + val) == sorted(paths) and not set(train) & set(val)
    assert train == sorted(train) and val == sorted(val)
    if len(paths) >= 2:
        assert train and val
    assert split_files(sorted(paths, reverse=True), frac) == (train, val)


def test_split_is_by_stable_hash_of_relative_path():
    paths = [f"pkg/mod{i}.py" for i in range(400)]
    train, val = split_files(paths, 0.05)
    expected = [p for p in paths
                if int.from_bytes(hashlib.sha1(p.encode()).digest()[:8], "big") / 2**64 < 0.05]
    assert val == sorted(expected)
    assert 5 <= len(val) <= 40  # ~5% of 400


def test_manifest_describes_the_data(tmp_path):
    root = _tree(tmp_path / "src", {f"f{i}.txt": bytes([65 + i]) * (10 + i) for i in range(30)})
    c = text(str(root))
    m = json.loads((c.directory / "manifest.json").read_text())
    data = (c.directory / "data.bin").read_bytes()
    assert m == c.manifest
    assert m["files"] == 30 and m["train_files"] + m["validation_files"] == 30
    assert m["bytes"] == len(data) == sum(10 + i for i in range(30))
    assert m["train_bytes"] + m["validation_bytes"] == m["bytes"]
    assert m["sha256"] == hashlib.sha256(data).hexdigest()
    assert m["python"].count(".") == 2 and m["split"] == "file"
    train, val = split_files([f"f{i}.txt" for i in range(30)], 0.05)
    expect = b"".join((root / p).read_bytes() for p in train + val)
    assert data == expect
    assert bytes(c.split("train")) == expect[:m["train_bytes"]]


def _build_counter(monkeypatch):
    calls = []
    real = corpus_mod._build

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(corpus_mod, "_build", counting)
    return calls


def test_cache_is_reused_and_rebuilt_when_corrupt_or_mismatched(tmp_path, monkeypatch):
    root = _tree(tmp_path / "src", {f"f{i}.txt": bytes(range(i, i + 50)) for i in range(10)})
    calls = _build_counter(monkeypatch)
    c = text(str(root))
    good = (c.directory / "data.bin").read_bytes()
    assert len(calls) == 1
    text(str(root))
    assert len(calls) == 1  # reused
    del c
    # a flipped byte fails the checksum → rebuilt, same content
    raw = bytearray(good)
    raw[7] ^= 0xFF
    (text(str(root)).directory / "data.bin").write_bytes(bytes(raw))
    c = text(str(root))
    assert len(calls) == 2 and (c.directory / "data.bin").read_bytes() == good
    # a truncated data file → rebuilt
    (c.directory / "data.bin").write_bytes(good[:-3])
    assert text(str(root)).manifest["bytes"] == len(good) and len(calls) == 3
    # a manifest from another Python / format → rebuilt
    m = json.loads((c.directory / "manifest.json").read_text())
    m["python"] = "2.7.18"
    (c.directory / "manifest.json").write_text(json.dumps(m))
    text(str(root))
    assert len(calls) == 4
    # an unreadable manifest → rebuilt
    (c.directory / "manifest.json").write_text("{not json")
    text(str(root))
    assert len(calls) == 5


def test_a_crash_while_building_leaves_the_previous_cache_intact(tmp_path):
    root = _tree(tmp_path / "src", {"a.txt": b"x" * 100, "b.txt": b"y" * 100})
    c = text(str(root))
    before = {p.name: p.read_bytes() for p in c.directory.iterdir()}
    (root / "a.txt").write_bytes(b"z" * 120)  # the source changed: a rebuild is due

    def crash(out, src, h, start=0, stop=None):
        out.write(b"partial")
        raise KeyboardInterrupt("killed mid-write")

    with pytest.MonkeyPatch.context() as mp, pytest.raises(KeyboardInterrupt):
        mp.setattr(corpus_mod, "_copy_into", crash)
        text(str(root))
    after = {p.name: p.read_bytes() for p in c.directory.iterdir()}
    assert after == before  # no temp files left, old data and manifest untouched
    rebuilt = text(str(root))
    assert rebuilt.manifest["bytes"] == 220
    assert (bytes(rebuilt.split("train")) + bytes(rebuilt.split("validation"))).count(b"z") == 120


def test_windows_are_deterministic_shifted_substrings(small_stdlib):
    c = small_stdlib
    b = c.batch("train", 5, batch_size=4, seq_len=64, seed=3)
    assert b["tokens"].shape == b["targets"].shape == (4, 64)
    assert b["tokens"].dtype == b["targets"].dtype == torch.int64 and "mask" not in b
    assert torch.equal(b["tokens"][:, 1:], b["targets"][:, :-1])
    split = bytes(c.split("train"))
    for row, tgt in zip(b["tokens"].tolist(), b["targets"].tolist()):
        assert bytes(row + tgt[-1:]) in split
    again = c.batch("train", 5, batch_size=4, seq_len=64, seed=3)
    assert all(torch.equal(b[k], again[k]) for k in b)
    for other in (c.batch("train", 5, batch_size=4, seq_len=64, seed=4),
                  c.batch("train", 6, batch_size=4, seq_len=64, seed=3),
                  c.batch("validation", 5, batch_size=4, seq_len=64, seed=3)):
        assert not torch.equal(b["tokens"], other["tokens"])


def test_seq_len_longer_than_the_split_is_a_clear_error(small_stdlib):
    n = len(small_stdlib.split("validation"))
    with pytest.raises(ValueError, match=rf"validation split has {n} bytes.*seq_len={n}"):
        small_stdlib.batch("validation", 0, batch_size=1, seq_len=n)
    with pytest.raises(ValueError, match="split must be one of"):
        small_stdlib.batch("test", 0, batch_size=1, seq_len=8)


def test_uniform_model_scores_8_bits_per_byte(small_stdlib):
    m = small_stdlib.evaluate(Uniform(256), batch_size=2, seq_len=32, batches=3)
    assert rel_err(m["loss"], math.log(256)) < 1e-6 and rel_err(m["bpb"], 8.0) < 1e-6
    assert rel_err(m["ppl"], 256.0) < 1e-5 and m["tokens"] == 2 * 32 * 3


def test_evaluate_matches_float64_bigram_ground_truth_streamed_or_not(small_stdlib):
    g = torch.Generator().manual_seed(0)
    table = torch.randn(256, 256, generator=g)

    def bigram(tokens, state=None):
        return table[tokens], state

    val = np.asarray(small_stdlib.split("validation"), dtype=np.int64)
    T, W = 48, 6
    starts = np.round(np.linspace(0, len(val) - T - 1, W)).astype(np.int64)
    lp = torch.log_softmax(table.double(), -1)
    nll = [float(-lp[val[s + t], val[s + t + 1]]) for s in starts for t in range(T)]
    truth = sum(nll) / len(nll)
    whole = small_stdlib.evaluate(bigram, batch_size=2, seq_len=T, batches=3)
    streamed = small_stdlib.evaluate(bigram, batch_size=2, seq_len=T, batches=3, stream_chunk=7)
    assert rel_err(whole["loss"], truth) < 1e-6
    assert rel_err(streamed["loss"], truth) < 1e-6
    assert rel_err(whole["bpb"], truth / math.log(2)) < 1e-6


def test_options_are_validated(tmp_path):
    (tmp_path / "a").write_bytes(b"abc")
    with pytest.raises(ValueError, match="val_fraction must be in"):
        open_corpus("t", tmp_path, ["a"], val_fraction=1.5)
    with pytest.raises(ValueError, match="no files found"):
        open_corpus("t", tmp_path, [])
