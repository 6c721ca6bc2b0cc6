"""Continual associative recall: phases by index, fixed mappings, per-phase accuracy."""

from __future__ import annotations

import pytest
import torch

import nlframe
from nlframe_plugins.data.continual import Continual

from .conftest import Uniform


def test_phase_follows_the_batch_index():
    task = Continual(num_phases=3, phase_steps=10)
    assert [task.phase_of(i) for i in (0, 9, 10, 19, 20, 29, 30, 10_000)] == [0, 0, 1, 1, 2, 2, 2, 2]
    b = task.batch("train", 15, batch_size=2, seq_len=8)
    expect = task.phase_batch(1, "train", 15, batch_size=2, seq_len=8)
    assert all(torch.equal(b[k], expect[k]) for k in b)


@pytest.mark.parametrize("T", [2, 7, 16])
def test_pairs_follow_the_phase_mapping(T):
    task = Continual(num_phases=3, num_keys=8, num_values=6)
    for p in range(3):
        b = task.phase_batch(p, "train", 0, batch_size=4, seq_len=T, seed=5)
        tok, tgt, mask = b["tokens"], b["targets"], b["mask"]
        assert tok.shape == tgt.shape == mask.shape == (4, T) and mask.dtype == torch.bool
        assert torch.equal(tok[:, 1:], tgt[:, :-1])
        keys = tok[:, 0::2]
        assert ((keys >= 1) & (keys <= 8)).all() and int(tok.max()) < task.vocab_size == 15
        assert mask.sum() == 4 * (T // 2)
        assert torch.equal(tgt[mask], task.mapping(p)[tok[mask] - 1])


def test_mappings_change_between_phases_and_ignore_the_batch_seed():
    task = Continual(num_phases=4, num_keys=32, num_values=32)
    maps = [task.mapping(p) for p in range(4)]
    assert all((maps[i] != maps[j]).float().mean() > 0.8 for i in range(4) for j in range(i))
    assert torch.equal(Continual(num_phases=4).mapping(2), maps[2])
    assert not torch.equal(Continual(num_phases=4, mapping_seed=1).mapping(2), maps[2])
    a = task.phase_batch(0, "train", 0, batch_size=2, seq_len=10, seed=0)
    b = task.phase_batch(0, "train", 0, batch_size=2, seq_len=10, seed=1)
    assert not torch.equal(a["tokens"], b["tokens"])
    with pytest.raises(ValueError, match=r"phase must be in \[0, 4\)"):
        task.mapping(4)


class PhaseOracle:
    """Knows mapping ``f_p`` of one phase: predicts ``f_p(token)`` after every key."""

    def __init__(self, task: Continual, phase: int) -> None:
        self.table, self.V = task.mapping(phase), task.vocab_size
        self.K = task.num_keys

    def __call__(self, tokens, state=None):
        logits = torch.zeros(*tokens.shape, self.V)
        is_key = (tokens >= 1) & (tokens <= self.K)
        pred = self.table[(tokens - 1).clamp(0, self.K - 1)]
        logits[is_key] = torch.nn.functional.one_hot(pred[is_key], self.V).float() * 10
        return logits, state


def test_evaluate_reports_every_phase_and_shows_forgetting():
    task = Continual(num_phases=3, num_keys=16, num_values=16)
    m = task.evaluate(PhaseOracle(task, 2), batch_size=4, seq_len=32, batches=2, stream_chunk=5)
    assert set(m) == {"acc/phase0", "acc/phase1", "acc/phase2", "accuracy", "loss"}
    assert m["acc/phase2"] == 1.0
    assert m["acc/phase0"] < 0.3 and m["acc/phase1"] < 0.3  # an earlier mapping is "forgotten"
    assert m["accuracy"] == pytest.approx(sum(m[f"acc/phase{p}"] for p in range(3)) / 3)
    u = task.evaluate(Uniform(task.vocab_size), batch_size=2, seq_len=8, batches=1)
    assert u["accuracy"] == 0.0


def test_errors_and_registration():
    with pytest.raises(ValueError, match="phase_steps must be an int >= 1"):
        Continual(phase_steps=0)
    with pytest.raises(ValueError, match="seq_len must be >= 2"):
        Continual().batch("train", 0, batch_size=1, seq_len=1)
    assert nlframe.get_registry().get("data", "continual") is Continual
