"""Masked cross-entropy / accuracy over streamed pieces against a float64 ground truth."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, strategies as st

from nlframe.interfaces import Batch
from nlframe_plugins.data.metrics import (Totals, accuracy_metrics, evaluate_streams, lm_metrics,
                                          pieces, score_stream)

from .conftest import Uniform, rel_err


class Table:
    """Stateless model: ``logits[b, t] = table[tokens[b, t]]``."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table

    def __call__(self, tokens, state=None):
        return self.table[tokens], state


def _random_batch(g, B, T, V, p_mask):
    tokens = torch.randint(0, V, (B, T), generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) < p_mask
    return Batch(tokens=tokens, targets=targets, mask=mask)


def _ground_truth(table, batch):
    """float64 per-position −log p and correctness, summed over the mask."""
    lp = torch.log_softmax(table.double()[batch["tokens"]], -1)
    nll = -lp.gather(-1, batch["targets"][..., None])[..., 0]
    correct = table[batch["tokens"]].argmax(-1) == batch["targets"]
    m = batch["mask"]
    rows = m.any(1)
    exact = (rows & ((correct | ~m).all(1))).sum()
    return float(nll[m].sum()), int(correct[m].sum()), int(m.sum()), int(rows.sum()), int(exact)


@given(B=st.integers(1, 4), T=st.integers(1, 24), V=st.integers(2, 9),
       chunk=st.integers(1, 30), p_mask=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 99))
def test_score_stream_matches_float64(B, T, V, chunk, p_mask, seed):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(V, V, generator=g) * 3
    batch = _random_batch(g, B, T, V, p_mask)
    got = score_stream(Table(table), pieces(batch, chunk))
    nll, correct, count, rows, exact = _ground_truth(table, batch)
    assert (got.correct, got.count, got.rows, got.exact_rows) == (correct, count, rows, exact)
    assert got.nll == pytest.approx(nll, rel=1e-5, abs=1e-9)


def test_pieces_cover_the_batch_in_order():
    g = torch.Generator().manual_seed(0)
    batch = _random_batch(g, 2, 10, 5, 0.5)
    ps = list(pieces(batch, 3))
    assert [p["tokens"].shape[1] for p in ps] == [3, 3, 3, 1]
    for k in batch:
        assert torch.equal(torch.cat([p[k] for p in ps], 1), batch[k])
    assert list(pieces(batch, None))[0] is batch
    with pytest.raises(ValueError, match="stream_chunk"):
        list(pieces(batch, 0))


def test_state_is_carried_between_pieces_and_reset_between_streams():
    model = Uniform(4)
    states = []

    def spy(tokens, state=None):
        states.append(state)
        return model(tokens, state)

    batch = Batch(tokens=torch.zeros(1, 7, dtype=torch.long), targets=torch.zeros(1, 7, dtype=torch.long))
    evaluate_streams(spy, [pieces(batch, 3), pieces(batch, 3)])
    assert states == [None, 3, 6, None, 3, 6]


def test_uniform_model_gives_ln_v_and_8_bits_per_byte():
    batch = Batch(tokens=torch.zeros(3, 5, dtype=torch.long),
                  targets=torch.randint(0, 256, (3, 5)))
    t = evaluate_streams(Uniform(256), [pieces(batch, 2)])
    m = lm_metrics(t)
    assert rel_err(m["loss"], math.log(256)) < 1e-6
    assert rel_err(m["bpb"], 8.0) < 1e-6
    assert rel_err(m["ppl"], 256.0) < 1e-5
    assert m["tokens"] == 15


def test_accuracy_metrics_and_empty_totals():
    t = Totals(nll=3.0, correct=3, count=4, rows=2, exact_rows=1)
    assert accuracy_metrics(t) == {"accuracy": 0.75, "exact_match": 0.5, "loss": 0.75}
    assert all(math.isnan(v) for v in accuracy_metrics(Totals()).values())


def test_bad_model_output_and_vocabulary_are_named():
    batch = Batch(tokens=torch.zeros(2, 3, dtype=torch.long),
                  targets=torch.full((2, 3), 7, dtype=torch.long))
    with pytest.raises(ValueError, match=r"outside the model's vocabulary of 4 logits"):
        score_stream(Uniform(4), [batch])
    with pytest.raises(ValueError, match=r"logits of shape \(2, 4\)"):
        score_stream(lambda x, state=None: (torch.zeros(2, 4), None), [batch])


def test_eval_mode_restores_training_and_disables_grad():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(4, 4)
            self.seen = []

        def forward(self, tokens, state=None):
            self.seen.append((self.training, torch.is_grad_enabled()))
            return self.emb(tokens), state

    m = M()
    batch = Batch(tokens=torch.zeros(1, 2, dtype=torch.long), targets=torch.zeros(1, 2, dtype=torch.long))
    evaluate_streams(m, [[batch]])
    assert m.seen == [(False, False)] and m.training
