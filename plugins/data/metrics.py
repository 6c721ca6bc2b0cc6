"""Evaluation shared by all data plugins: masked cross-entropy and accuracy over
sequences fed to a model in pieces, carrying its state.

A model is ``model(tokens (B, t) long, state=None) -> (logits (B, t, V), state)``.
A *stream* is an iterable of :class:`~nlframe.interfaces.Batch` pieces that
continue the same ``B`` sequences; the state is carried from piece to piece
and reset between streams. Only the statistics of the counted (masked)
positions are kept, so memory does not grow with the sequence length.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

from nlframe.interfaces import Batch, DataSource

__all__ = ["Totals", "pieces", "score_stream", "evaluate_streams", "lm_metrics",
           "accuracy_metrics", "AccuracyTask", "eval_mode"]

Model = Callable[..., Any]


@dataclasses.dataclass
class Totals:
    """Sums over counted positions: ``nll = Σ −ln p(target)`` (nats), correct
    greedy predictions, positions, and rows whose every counted position was
    right (``exact_rows`` of ``rows`` with at least one counted position)."""

    nll: float = 0.0
    correct: int = 0
    count: int = 0
    rows: int = 0
    exact_rows: int = 0

    def __iadd__(self, other: "Totals") -> "Totals":
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    @property
    def loss(self) -> float:
        """Mean cross-entropy ``(1/N) Σ −ln p(target)`` in nats per counted token."""
        return self.nll / self.count if self.count else math.nan

    @property
    def accuracy(self) -> float:
        return self.correct / self.count if self.count else math.nan

    @property
    def exact_match(self) -> float:
        return self.exact_rows / self.rows if self.rows else math.nan


def pieces(batch: Batch, chunk: int | None) -> Iterator[Batch]:
    """Split a batch along ``T`` into pieces of at most ``chunk`` tokens (all of it if ``None``)."""
    T = batch["tokens"].shape[1]
    if chunk is None or chunk >= T:
        yield batch
        return
    if chunk < 1:
        raise ValueError(f"stream_chunk must be a positive int, got {chunk}")
    for a in range(0, T, chunk):
        yield Batch({k: v[:, a:a + chunk] for k, v in batch.items()})


@contextlib.contextmanager
def eval_mode(model: Model) -> Iterator[None]:
    """``torch.no_grad()`` and, for an ``nn.Module``, ``model.eval()`` restored afterwards."""
    was_training = getattr(model, "training", None)
    if was_training:
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            model.train()


def score_stream(model: Model, stream: Iterable[Batch], *,
                 device: torch.device | str = "cpu") -> Totals:
    """Feed the pieces of ``stream`` to ``model`` carrying its state; sum the masked statistics.

    Per counted position ``t``: ``nll_t = −log_softmax(logits_t)[target_t]``
    and ``correct_t = [argmax logits_t = target_t]``; positions where the
    piece's ``mask`` is false (or all, without a mask) are ignored.
    """
    state, acc = None, None
    for piece in stream:
        tokens = piece["tokens"].to(device)
        logits, state = model(tokens, state=state)
        if logits.shape[:2] != tokens.shape or logits.dim() != 3:
            raise ValueError(f"model returned logits of shape {tuple(logits.shape)} for tokens of "
                             f"shape {tuple(tokens.shape)}; expected (B, T, V)")
        B, _, V = logits.shape
        if acc is None:
            acc = [torch.zeros(B, dtype=torch.float64, device=logits.device),
                   torch.zeros(B, dtype=torch.int64, device=logits.device),
                   torch.zeros(B, dtype=torch.int64, device=logits.device)]
        mask = piece.get("mask")
        mask = (torch.ones_like(tokens, dtype=torch.bool) if mask is None
                else mask.to(logits.device))
        if not bool(mask.any()):
            continue
        targets = piece["targets"].to(logits.device)[mask]  # (N,)
        if int(targets.max()) >= V:
            top = int(targets.max())
            raise ValueError(f"target id {top} is outside the model's vocabulary of {V} "
                             f"logits; the data source needs vocab_size > {top}")
        sel = logits[mask].float()  # (N, V)
        rows = mask.nonzero()[:, 0]  # (N,)
        nll = F.cross_entropy(sel, targets, reduction="none").double()
        acc[0].index_add_(0, rows, nll)
        acc[1].index_add_(0, rows, (sel.argmax(-1) == targets).long())
        acc[2].index_add_(0, rows, torch.ones_like(rows))
    if acc is None:
        return Totals()
    nll, correct, count = (a.cpu() for a in acc)
    counted = count > 0
    return Totals(nll=float(nll.sum()), correct=int(correct.sum()), count=int(count.sum()),
                  rows=int(counted.sum()), exact_rows=int((counted & (correct == count)).sum()))


def evaluate_streams(model: Model, streams: Iterable[Iterable[Batch]], *,
                     device: torch.device | str = "cpu") -> Totals:
    """:func:`score_stream` over several streams (state reset between them), under ``no_grad``."""
    total = Totals()
    with eval_mode(model):
        for stream in streams:
            total += score_stream(model, stream, device=device)
    return total


def lm_metrics(t: Totals) -> dict[str, float]:
    """Byte-level LM metrics: ``loss`` (nats/token), ``bpb = loss / ln 2`` (one byte per
    token) and ``ppl = exp(loss)``."""
    return {"loss": t.loss, "bpb": t.loss / math.log(2), "ppl": math.exp(t.loss),
            "tokens": float(t.count)}


def accuracy_metrics(t: Totals) -> dict[str, float]:
    """Task metrics: ``accuracy`` at answer positions, ``exact_match`` (every answer position
    of a sequence right) and ``loss`` there (nats)."""
    return {"accuracy": t.accuracy, "exact_match": t.exact_match, "loss": t.loss}


class AccuracyTask(DataSource):
    """A task whose metric is the accuracy at masked positions of validation batches
    ``0 .. batches−1``."""

    def evaluate(self, model: Model, *, device: torch.device | str = "cpu", batch_size: int,
                 seq_len: int, batches: int, seed: int = 0,
                 stream_chunk: int | None = None) -> dict[str, float]:
        streams = (pieces(self.batch("validation", i, batch_size=batch_size, seq_len=seq_len,
                                     seed=seed), stream_chunk) for i in range(batches))
        return accuracy_metrics(evaluate_streams(model, streams, device=device))
