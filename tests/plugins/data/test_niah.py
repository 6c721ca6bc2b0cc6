"""Needle in a haystack: layout, lazy pieces, streamed metric, and a 1M-token stream."""

from __future__ import annotations

import math
import time
import tracemalloc

import pytest
import torch
from hypothesis import given, strategies as st

import nlframe
from nlframe_plugins.data.niah import FILLER, NEEDLE, NIAH, QUERY

from .conftest import Scanner, Uniform, rel_err


def test_layout_puts_needle_at_depth_and_query_at_the_end():
    task = NIAH(depth=0.5, digits=6)
    T = 2000
    b = task.batch("validation", 0, batch_size=3, seq_len=T)
    lay = task.layout("validation", 0, batch_size=3, seq_len=T)
    for r in range(3):
        key = lay["keys"][r]
        needle = NEEDLE.replace(b"{key}", key.encode())
        row = bytes(b["tokens"][r].tolist())
        assert len(key) == 6 and key.isdigit() and b["tokens"].shape == (3, T)
        assert row.endswith(QUERY + key.encode())
        p = row.index(needle)
        H = T - len(needle) - len(QUERY) - 6
        assert abs(p - 0.5 * H) <= len(FILLER) and row.count(needle) == 1
        haystack = row[:p] + row[p + len(needle):H + len(needle)]
        assert haystack == (FILLER * (H // len(FILLER) + 1))[:H]  # pattern continues across the needle
        assert p == 0 or row[p - 2:p] == b". "  # at a sentence boundary
        mask = b["mask"][r]
        assert mask.sum() == 6 and mask[T - 7:T - 1].all()
        assert bytes(b["targets"][r][mask].tolist()) == key.encode()


@pytest.mark.parametrize("depth", [0.0, 1.0])
def test_extreme_depths(depth):
    task = NIAH(depth=depth)
    T = 700
    b = task.batch("train", 0, batch_size=1, seq_len=T)
    row, key = bytes(b["tokens"][0].tolist()), task.layout("train", 0, batch_size=1, seq_len=T)["keys"][0]
    needle = NEEDLE.replace(b"{key}", key.encode())
    p, H = row.index(needle), T - task.overhead
    longest_sentence = max(len(s) for s in FILLER.split(b". ")) + 2
    assert p == 0 if depth == 0.0 else 0 <= H - p < longest_sentence


@given(chunk=st.integers(1, 400), seed=st.integers(0, 20))
def test_pieces_concatenate_to_the_batch(chunk, seed):
    task = NIAH()
    whole = task.batch("train", seed, batch_size=2, seq_len=397, seed=seed)
    ps = list(task.pieces("train", seed, batch_size=2, seq_len=397, seed=seed, chunk=chunk))
    assert all(p["tokens"].shape[1] <= chunk for p in ps)
    for k in whole:
        assert torch.equal(torch.cat([p[k] for p in ps], 1), whole[k])


def test_determinism_random_depth_and_seeds():
    task = NIAH()
    lay = task.layout("train", 4, batch_size=8, seq_len=5000, seed=2)
    assert lay == task.layout("train", 4, batch_size=8, seq_len=5000, seed=2)
    assert len(set(lay["pos"])) > 4 and len(set(lay["keys"])) == 8
    assert lay["keys"] != task.layout("train", 4, batch_size=8, seq_len=5000, seed=3)["keys"]
    assert lay["keys"] != task.layout("validation", 4, batch_size=8, seq_len=5000, seed=2)["keys"]


MARK = b"the secret number is "


def _passkey_oracle() -> Scanner:
    """Independent reader: remember the digits after the first MARK; recite them after any later MARK."""

    def step(row, tok):
        row["tail"] = (row["tail"] + bytes([tok]))[-len(MARK):]
        if row["reading"]:
            if chr(tok).isdigit():
                row["key"] += bytes([tok])
            else:
                row["reading"] = False
        if row["tail"] == MARK:
            if row["key"]:
                row["reciting"] = 0
            else:
                row["reading"] = True
        elif row["reciting"] is not None:
            row["reciting"] += 1
        i = row["reciting"]
        if i is not None and i < len(row["key"]):
            return row["key"][i]
        return None

    return Scanner(256, lambda: {"tail": b"", "key": b"", "reading": False, "reciting": None}, step)


@pytest.mark.parametrize("chunk", [None, 97])
def test_oracle_exact_match_and_uniform_baseline(chunk):
    task = NIAH(digits=4)
    m = task.evaluate(_passkey_oracle(), batch_size=2, seq_len=1500, batches=2, stream_chunk=chunk)
    assert m["exact_match"] == 1.0 and m["accuracy"] == 1.0
    u = task.evaluate(Uniform(256), batch_size=2, seq_len=1500, batches=1, stream_chunk=chunk)
    assert u["exact_match"] == 0.0 and rel_err(u["loss"], math.log(256)) < 1e-6


def _peak_numpy_bytes(task, T, chunk):
    tracemalloc.start()
    for _ in task.pieces("validation", 0, batch_size=1, seq_len=T, chunk=chunk):
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_a_million_tokens_stream_in_constant_memory():
    task = NIAH(depth=0.5)
    T, chunk = 1_000_000, 1 << 15
    model = Uniform(256)
    t0 = time.perf_counter()
    m = task.evaluate(model, batch_size=1, seq_len=T, batches=1, stream_chunk=chunk)
    elapsed = time.perf_counter() - t0
    assert max(s[1] for s in model.pieces) == chunk and sum(s[1] for s in model.pieces) == T
    assert rel_err(m["loss"], math.log(256)) < 1e-6 and m["exact_match"] == 0.0
    small, large = _peak_numpy_bytes(task, 1 << 16, chunk), _peak_numpy_bytes(task, T, chunk)
    assert large < 1.5 * small + (1 << 20), (small, large)  # flat in T, not 15x
    assert large < 64 * chunk  # a few chunk-sized arrays, never the sequence
    assert elapsed < 60  # a sanity bound on a loaded machine, not a benchmark


def test_stdlib_filler_comes_from_the_same_split(small_stdlib):
    task = NIAH(filler="stdlib", depth=0.3)
    task._corpus = small_stdlib
    b = task.batch("train", 0, batch_size=1, seq_len=600)
    lay = task.layout("train", 0, batch_size=1, seq_len=600)
    row = bytes(b["tokens"][0].tolist())
    p = lay["pos"][0]
    train = bytes(small_stdlib.split("train"))
    assert row[:p] in train + train[:p]  # wraps around the split


def test_errors_and_registration():
    with pytest.raises(ValueError, match=r"seq_len=50 is shorter than needle \+ query \+ answer"):
        NIAH().batch("train", 0, batch_size=1, seq_len=50)
    with pytest.raises(ValueError, match="depth must be in"):
        NIAH(depth=1.5)
    with pytest.raises(ValueError, match="filler must be"):
        NIAH(filler="lorem")
    assert nlframe.get_registry().get("data", "niah") is NIAH


def test_one_needle_is_the_default_task():
    one, default = NIAH(needles=1, depth=0.4), NIAH(depth=0.4)
    a = one.batch("validation", 3, batch_size=2, seq_len=900, seed=1)
    b = default.batch("validation", 3, batch_size=2, seq_len=900, seed=1)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("filler", ["pattern", "stdlib"])
def test_several_needles_answer_the_last(filler, small_stdlib):
    task = NIAH(needles=4, depth=0.7, filler=filler)
    task._corpus = small_stdlib
    T = 3000
    b = task.batch("train", 1, batch_size=3, seq_len=T, seed=5)
    lay = task.layout("train", 1, batch_size=3, seq_len=T, seed=5)
    for r in range(3):
        row = bytes(b["tokens"][r].tolist())
        keys = [k for _, k in lay["needles"][r]]
        assert len(set(keys)) == 4 and keys[-1] == lay["keys"][r]
        found = [row.index(NEEDLE.replace(b"{key}", k.encode())) for k in keys]
        assert found == sorted(found) and row.endswith(QUERY + keys[-1].encode())
        assert found[-1] == lay["pos"][r] + 3 * task.needle_len  # the answer's needle at depth
        assert bytes(b["targets"][r][b["mask"][r]].tolist()) == keys[-1].encode()
    ps = list(task.pieces("train", 1, batch_size=3, seq_len=T, seed=5, chunk=257))
    assert torch.equal(torch.cat([p["tokens"] for p in ps], 1), b["tokens"])


def test_several_needles_errors():
    with pytest.raises(ValueError, match="needles=11 distinct keys"):
        NIAH(needles=11, digits=1)
    with pytest.raises(ValueError, match="needles=3"):
        NIAH(needles=3).batch("train", 0, batch_size=1, seq_len=300)


def test_train_loss_all_counts_every_train_position_and_leaves_evaluation_alone():
    from nlframe_plugins.data.niah import NIAH

    plain, full = NIAH(), NIAH(train_loss="all")
    a = plain.batch("train", 3, batch_size=2, seq_len=200, seed=1)
    b = full.batch("train", 3, batch_size=2, seq_len=200, seed=1)
    assert torch.equal(a["tokens"], b["tokens"]) and torch.equal(a["targets"], b["targets"])
    assert int(a["mask"].sum()) == 2 * plain.digits
    assert bool(b["mask"][:, :-1].all()) and not bool(b["mask"][:, -1].any())
    v1 = plain.batch("validation", 0, batch_size=2, seq_len=200)
    v2 = full.batch("validation", 0, batch_size=2, seq_len=200)
    assert torch.equal(v1["mask"], v2["mask"])
    with pytest.raises(ValueError, match="train_loss must be 'answer' or 'all'"):
        NIAH(train_loss="everything")
