"""``continual``: associative recall whose key→value mapping changes phase by phase.

Phase ``p`` has a fixed mapping ``f_p: keys → values`` (drawn from
``(mapping_seed, p)``, independent of the batch seed, so it is one task for
training and evaluation alike). A sequence is a stream of pairs
``k_1 f_p(k_1) k_2 f_p(k_2) …`` with keys uniform in ``[1, 1 + K)`` and values
in ``[1 + K, 1 + K + V)``; the mask is true at every key (the target is the
next token, its value). Because ``f_p`` is the same in every sequence of a
phase, it can be stored in slow weights (or inferred in context from earlier
pairs of the same sequence).

Training batch ``index`` belongs to phase ``min(index // phase_steps,
num_phases − 1)``: successive remappings of the same keys. ``evaluate``
reports ``acc/phase<p>`` for every phase and their mean ``accuracy``; after
training through phase ``P``, low accuracy on phases ``< P`` is forgetting.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from nlframe.interfaces import Batch, DataSource

from .common import check_int, check_no_arg, check_split, generator, make_batch
from .metrics import Totals, eval_mode, pieces, score_stream

__all__ = ["Continual"]


class Continual(DataSource):
    """Associative recall under successive remappings ``f_0, f_1, …`` (one per phase)."""

    def __init__(self, arg: Any = None, *, num_phases: int = 4, phase_steps: int = 1000,
                 num_keys: int = 32, num_values: int = 32, mapping_seed: int = 0) -> None:
        check_no_arg("continual", arg)
        self.num_phases = check_int("continual", "num_phases", num_phases)
        self.phase_steps = check_int("continual", "phase_steps", phase_steps)
        self.num_keys = check_int("continual", "num_keys", num_keys)
        self.num_values = check_int("continual", "num_values", num_values, 2)
        self.mapping_seed = int(mapping_seed)
        self.vocab_size = 1 + self.num_keys + self.num_values
        self._maps = [self._draw_mapping(p) for p in range(self.num_phases)]

    def _draw_mapping(self, phase: int) -> Tensor:
        g = generator("continual-mapping", self.mapping_seed, phase)
        return 1 + self.num_keys + torch.randint(0, self.num_values, (self.num_keys,), generator=g)

    def mapping(self, phase: int) -> Tensor:
        """``f_p`` as a table: ``mapping(p)[k − 1]`` is the value token of key token ``k``."""
        if not 0 <= phase < self.num_phases:
            raise ValueError(f"continual: phase must be in [0, {self.num_phases}), got {phase}")
        return self._maps[phase]

    def phase_of(self, index: int) -> int:
        """The phase of training batch ``index``: ``min(index // phase_steps, num_phases − 1)``."""
        return min(index // self.phase_steps, self.num_phases - 1)

    def phase_batch(self, phase: int, split: str, index: int, *, batch_size: int, seq_len: int,
                    seed: int = 0) -> Batch:
        """Batch ``index`` of ``split`` drawn from phase ``phase``'s task."""
        check_split("continual", split)
        check_int("continual", "batch_size", batch_size, 0)
        if seq_len < 2:
            raise ValueError(f"continual: seq_len must be >= 2 (a key and its value), "
                             f"got {seq_len}")
        table = self.mapping(phase)
        B, T = batch_size, seq_len
        g = generator("continual", seed, split, phase, index)
        keys = torch.randint(1, 1 + self.num_keys, (B, (T + 1) // 2), generator=g)  # (B, ⌈T/2⌉)
        pairs = torch.stack([keys, table[keys - 1]], -1).reshape(B, -1)[:, :T]  # (B, T)
        targets = torch.cat([pairs[:, 1:], torch.zeros(B, 1, dtype=torch.int64)], 1)
        mask = (torch.arange(T) % 2 == 0) & (torch.arange(T) < T - 1)
        return make_batch(pairs, targets, mask.expand(B, T))

    def batch(self, split: str, index: int, *, batch_size: int, seq_len: int,
              seed: int = 0) -> Batch:
        return self.phase_batch(self.phase_of(index), split, index, batch_size=batch_size,
                                seq_len=seq_len, seed=seed)

    def evaluate(self, model: Any, *, device: torch.device | str = "cpu", batch_size: int,
                 seq_len: int, batches: int, seed: int = 0,
                 stream_chunk: int | None = None) -> dict[str, float]:
        """``acc/phase<p>`` (accuracy at the keys of phase ``p``'s validation batches
        ``0 … batches−1``) for every phase, their mean ``accuracy``, and ``loss``."""
        out: dict[str, float] = {}
        total = Totals()
        with eval_mode(model):
            for p in range(self.num_phases):
                t = Totals()
                for i in range(batches):
                    b = self.phase_batch(p, "validation", i, batch_size=batch_size,
                                         seq_len=seq_len, seed=seed)
                    t += score_stream(model, pieces(b, stream_chunk), device=device)
                out[f"acc/phase{p}"] = t.accuracy
                total += t
        out["accuracy"] = sum(out.values()) / self.num_phases
        out["loss"] = total.loss
        return out
