"""``mqar``: multi-query associative recall (Zoology, arXiv 2312.04927 §3.1).

Each sequence first lists ``N = num_pairs`` key–value pairs, then queries
``Q = num_queries`` of the keys at random even offsets of the rest::

    k1 v1 k2 v2 … kN vN | 0 0 kσ1 vσ1 0 0 0 0 kσ2 vσ2 …        (length T)

Keys are distinct within a sequence and drawn from ``[1, 1 + K)``, values
(with repetition) from the disjoint range ``[1 + K, V)`` with
``K = (V − 1) // 2``; ``0`` fills the gaps. Each queried key is followed by
its value, so ``targets`` are the tokens shifted by one and the ``mask`` is
true exactly at the query keys: the model must output ``v_i`` after seeing
``k_i`` again. Metric: accuracy at the masked positions. A different random
mapping in every sequence makes this a test of in-context recall.
"""

from __future__ import annotations

from typing import Any

import torch

from nlframe.interfaces import Batch

from .common import check_int, check_no_arg, check_split, generator, make_batch
from .metrics import AccuracyTask

__all__ = ["MQAR"]


class MQAR(AccuracyTask):
    """Multi-query associative recall (Zoology arXiv 2312.04927): predict ``v_i`` at a later ``k_i``."""

    def __init__(self, arg: Any = None, *, num_pairs: int = 8, num_queries: int | None = None,
                 vocab_size: int = 256) -> None:
        check_no_arg("mqar", arg)
        self.num_pairs = check_int("mqar", "num_pairs", num_pairs)
        self.num_queries = check_int("mqar", "num_queries",
                                     num_pairs if num_queries is None else num_queries)
        self.vocab_size = check_int("mqar", "vocab_size", vocab_size, 5)
        self.num_keys = (self.vocab_size - 1) // 2  # K: keys [1, 1+K), values [1+K, V)
        if self.num_keys < self.num_pairs:
            raise ValueError(f"mqar: vocab_size={vocab_size} gives {self.num_keys} distinct keys, "
                             f"fewer than num_pairs={num_pairs}; need vocab_size >= "
                             f"{2 * num_pairs + 1}")

    def min_seq_len(self) -> int:
        """``2N + 2Q``: the pairs and one key–value slot per query."""
        return 2 * self.num_pairs + 2 * self.num_queries

    def batch(self, split: str, index: int, *, batch_size: int, seq_len: int,
              seed: int = 0) -> Batch:
        check_split("mqar", split)
        B, T, N, Q = batch_size, seq_len, self.num_pairs, self.num_queries
        check_int("mqar", "batch_size", B, 0)
        if T < self.min_seq_len():
            raise ValueError(f"mqar: seq_len={T} is too short for num_pairs={N} and "
                             f"num_queries={Q}; need seq_len >= 2*num_pairs + 2*num_queries "
                             f"= {self.min_seq_len()}")
        g = generator("mqar", seed, split, index)
        K = self.num_keys
        keys = torch.rand(B, K, generator=g).argsort(-1)[:, :N] + 1  # (B, N) distinct
        values = torch.randint(1 + K, self.vocab_size, (B, N), generator=g)  # (B, N)
        if Q <= N:
            which = torch.rand(B, N, generator=g).argsort(-1)[:, :Q]  # (B, Q) distinct pairs
        else:
            which = torch.randint(0, N, (B, Q), generator=g)
        slots = (T - 2 * N) // 2
        pos = 2 * N + 2 * torch.rand(B, slots, generator=g).argsort(-1)[:, :Q]  # (B, Q)

        tokens = torch.zeros(B, T, dtype=torch.int64)
        tokens[:, 0:2 * N:2], tokens[:, 1:2 * N:2] = keys, values
        tokens.scatter_(1, pos, keys.gather(1, which))
        tokens.scatter_(1, pos + 1, values.gather(1, which))
        targets = torch.cat([tokens[:, 1:], torch.zeros(B, 1, dtype=torch.int64)], 1)
        mask = torch.zeros(B, T, dtype=torch.bool).scatter_(1, pos, True)
        return make_batch(tokens, targets, mask)
