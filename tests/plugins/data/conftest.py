"""Fixtures for the data-plugin tests: a private cache dir, a small stdlib corpus, fake models."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from nlframe_plugins.data.stdlib import stdlib


@pytest.fixture(autouse=True)
def _data_cache(tmp_path_factory, monkeypatch):
    """Every test caches under a temporary directory, never the user's cache."""
    root = tmp_path_factory.getbasetemp() / "nlframe-cache"
    monkeypatch.setenv("NLFRAME_CACHE_DIR", str(root))
    return root


@pytest.fixture(scope="session")
def small_stdlib(tmp_path_factory):
    """The stdlib corpus restricted to its first 40 files, built once per session."""
    mp = pytest.MonkeyPatch()
    mp.setenv("NLFRAME_CACHE_DIR", str(tmp_path_factory.mktemp("stdlib-cache")))
    try:
        return stdlib(max_files=40)
    finally:
        mp.undo()


class Uniform:
    """``logits = 0``: every token has probability ``1/V``; the state counts tokens seen."""

    def __init__(self, vocab: int) -> None:
        self.vocab, self.pieces = vocab, []

    def __call__(self, tokens: torch.Tensor, state: Any = None):
        self.pieces.append(tuple(tokens.shape))
        seen = (0 if state is None else state) + tokens.shape[1]
        return torch.zeros(*tokens.shape, self.vocab), seen


class Scanner:
    """A stateful oracle: ``step(row_state, token) -> predicted next token or None``.

    Feeds every row token by token, carrying each row's state across calls,
    and outputs one-hot logits (10 at the prediction) or zeros.
    """

    def __init__(self, vocab: int, new_row: Callable[[], Any],
                 step: Callable[[Any, int], int | None]) -> None:
        self.vocab, self.new_row, self.step = vocab, new_row, step

    def __call__(self, tokens: torch.Tensor, state: Any = None):
        B, T = tokens.shape
        rows = [self.new_row() for _ in range(B)] if state is None else state
        logits = torch.zeros(B, T, self.vocab)
        for b, row in enumerate(tokens.tolist()):
            for t, tok in enumerate(row):
                pred = self.step(rows[b], tok)
                if pred is not None:
                    logits[b, t, pred] = 10.0
        return logits, rows


def rel_err(a: float, b: float) -> float:
    """``|a − b| / |b|``."""
    return abs(a - b) / max(abs(b), 1e-300)
