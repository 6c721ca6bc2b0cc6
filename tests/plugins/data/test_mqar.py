"""MQAR: layout invariants, determinism, and the metric with an oracle and a uniform model."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, strategies as st

import nlframe
from nlframe_plugins.data.mqar import MQAR

from .conftest import Scanner, Uniform, rel_err


def _check(task: MQAR, b, T):
    N, K, V = task.num_pairs, task.num_keys, task.vocab_size
    tok, tgt, mask = b["tokens"], b["targets"], b["mask"]
    assert tok.dtype == tgt.dtype == torch.int64 and mask.dtype == torch.bool
    assert tok.shape == tgt.shape == mask.shape and tok.shape[1] == T
    assert torch.equal(tok[:, 1:], tgt[:, :-1])
    keys, values = tok[:, 0:2 * N:2], tok[:, 1:2 * N:2]
    assert ((keys >= 1) & (keys <= K)).all() and ((values > K) & (values < V)).all()
    assert mask[:, :2 * N].sum() == 0 and (mask.sum(1) == task.num_queries).all()
    for b_, row in enumerate(tok.tolist()):
        pairs = dict(zip(row[0:2 * N:2], row[1:2 * N:2]))
        assert len(pairs) == N  # distinct keys
        for t in mask[b_].nonzero().flatten().tolist():
            assert tgt[b_, t] == pairs[row[t]]
        rest = [x for t, x in enumerate(row[2 * N:], 2 * N)
                if not mask[b_, t] and not (t > 0 and mask[b_, t - 1])]
        assert set(rest) <= {0}


@given(N=st.integers(1, 6), extra_q=st.integers(-3, 3), gap=st.integers(0, 9),
       seed=st.integers(0, 50))
def test_layout_invariants(N, extra_q, gap, seed):
    Q = max(1, N + extra_q)
    task = MQAR(num_pairs=N, num_queries=Q, vocab_size=2 * N + 7)
    T = task.min_seq_len() + gap
    _check(task, task.batch("train", seed, batch_size=3, seq_len=T, seed=seed), T)


def test_determinism_and_seeds():
    task = MQAR(num_pairs=4)
    a = task.batch("train", 3, batch_size=4, seq_len=32, seed=1)
    assert all(torch.equal(a[k], task.batch("train", 3, batch_size=4, seq_len=32, seed=1)[k])
               for k in a)
    assert not torch.equal(a["tokens"], task.batch("train", 3, batch_size=4, seq_len=32, seed=2)["tokens"])
    assert not torch.equal(a["tokens"], task.batch("validation", 3, batch_size=4, seq_len=32, seed=1)["tokens"])


def _recall_oracle(task: MQAR) -> Scanner:
    """Independent recall: remember each key's value from a key-value pair; predict it on a repeat."""

    def step(row, tok):
        row["t"] += 1
        if row["t"] < 2 * task.num_pairs:
            if row["t"] % 2:
                row["kv"][row["last"]] = tok
            row["last"] = tok
            return None
        return row["kv"].get(tok)

    return Scanner(task.vocab_size, lambda: {"t": -1, "kv": {}, "last": None}, step)


@pytest.mark.parametrize("chunk", [None, 5])
def test_oracle_scores_one_and_uniform_scores_ln_v(chunk):
    task = MQAR(num_pairs=6, vocab_size=64)
    m = task.evaluate(_recall_oracle(task), batch_size=3, seq_len=40, batches=2, stream_chunk=chunk)
    assert m["accuracy"] == 1.0 and m["exact_match"] == 1.0
    u = task.evaluate(Uniform(64), batch_size=3, seq_len=40, batches=2, stream_chunk=chunk)
    assert u["accuracy"] == 0.0  # argmax of equal logits is token 0, never a value
    assert rel_err(u["loss"], math.log(64)) < 1e-6


def test_errors_name_the_options():
    with pytest.raises(ValueError, match=r"seq_len=10 is too short.*>= .* = 16"):
        MQAR(num_pairs=4).batch("train", 0, batch_size=1, seq_len=10)
    with pytest.raises(ValueError, match="vocab_size=9 gives 4 distinct keys"):
        MQAR(num_pairs=8, vocab_size=9)
    with pytest.raises(ValueError, match="num_pairs must be an int >= 1"):
        MQAR(num_pairs=0)
    with pytest.raises(TypeError, match="num_pair"):
        MQAR(num_pair=3)
    assert nlframe.get_registry().get("data", "mqar") is MQAR
