"""``niah``: passkey retrieval over a haystack up to millions of bytes long.

Byte-level (vocab 256, so a model trained on ``stdlib`` can be tested). A
sequence of length ``T`` is ::

    filler[0:p]  NEEDLE(key)  filler[p:H]  QUERY  key

with ``H = T − |NEEDLE| − |QUERY| − digits`` filler bytes and the needle
inserted at ``p ≈ depth · H`` (for the ``pattern`` filler, at the sentence
boundary at or before it). ``key`` is a string of ``digits`` random decimal
digits per row; ``depth`` is an option (``None``: uniform per row). Fillers:
``pattern`` (a few plain sentences repeated) or ``stdlib`` (the stdlib
corpus's bytes of the same split, from a random offset per row, wrapping).

With ``needles = n > 1`` (a BABILong-style stress test: the latest of several
facts), ``n − 1`` distractor needles with other keys (all ``n`` distinct) lie
uniformly before the answered one, which is still at ``depth``; the answer is
the key of the last needle. ``n = 1`` is the plain single-needle task.

Nothing of length ``T`` is ever built for evaluation: :meth:`NIAH.pieces`
yields the sequence ``chunk`` tokens at a time, each byte computed from its
position, so ``T = 10^6`` or more streams in constant memory.

Metric (teacher forcing over the answer span): after ``QUERY`` and the true
key digits before it, the greedy prediction ``argmax p(· | prefix)`` of each
key digit; ``exact_match`` is the fraction of rows with every digit right,
``accuracy`` the fraction of digits right, ``loss`` their cross-entropy.
Training batches count the same answer positions, or with ``train_loss =
"all"`` every next byte of the sequence (the evaluation is unchanged).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from nlframe.interfaces import Batch, DataSource

from .common import check_int, check_no_arg, check_split, generator, make_batch
from .metrics import accuracy_metrics, evaluate_streams

__all__ = ["NIAH", "FILLER", "NEEDLE", "QUERY"]

FILLER = (b"The river runs down to the sea. The hills stand quiet in the rain. "
          b"Birds cross the open field at dawn. Nothing here is worth keeping. ")
NEEDLE = b"Remember this: the secret number is {key}. I repeat, the secret number is {key}. "
QUERY = b"\nQuestion: what is the secret number? Answer: the secret number is "


class NIAH(DataSource):
    """Passkey retrieval: read ``digits`` digits hidden at ``depth`` in ``T`` bytes of filler."""

    vocab_size = 256
    eval_defaults = {"seq_len": 1024, "batch_size": 4, "batches": 4, "stream_chunk": 256}

    def __init__(self, arg: Any = None, *, digits: int = 5, depth: float | None = None,
                 filler: str = "pattern", needles: int = 1, train_loss: str = "answer") -> None:
        check_no_arg("niah", arg)
        if train_loss not in ("answer", "all"):
            raise ValueError(f"niah: train_loss must be 'answer' or 'all', got {train_loss!r}")
        self.train_loss = train_loss
        self.digits = check_int("niah", "digits", digits)
        self.needles = check_int("niah", "needles", needles)
        if self.needles > 10 ** self.digits:
            raise ValueError(f"niah: needles={needles} distinct keys need more than "
                             f"digits={digits}")
        if depth is not None and not 0.0 <= float(depth) <= 1.0:
            raise ValueError(f"niah: depth must be in [0, 1] or None (random), got {depth!r}")
        self.depth = None if depth is None else float(depth)
        if filler not in ("pattern", "stdlib"):
            raise ValueError(f"niah: filler must be 'pattern' or 'stdlib', got {filler!r}")
        self.filler = filler
        self.needle_len = len(NEEDLE.replace(b"{key}", b"0" * self.digits))
        self.overhead = self.needles * self.needle_len + len(QUERY) + self.digits
        self._pattern = np.frombuffer(FILLER, dtype=np.uint8)
        self._corpus = None

    def _filler_bytes(self, split: str) -> np.ndarray:
        if self.filler == "pattern":
            return self._pattern
        if self._corpus is None:
            from .stdlib import stdlib

            self._corpus = stdlib()
        return self._corpus.split(split)

    def layout(self, split: str, index: int, *, batch_size: int, seq_len: int,
               seed: int = 0) -> dict[str, Any]:
        """Per row: answer ``keys`` (digit strings), its needle's position ``pos``, all
        ``needles`` as ``(position, key)`` in order, filler ``offset``; and ``H``."""
        check_split("niah", split)
        check_int("niah", "batch_size", batch_size, 0)
        H = seq_len - self.overhead
        if H < 0:
            raise ValueError(f"niah: seq_len={seq_len} is shorter than needle + query + answer "
                             f"({self.overhead} bytes with digits={self.digits}, "
                             f"needles={self.needles})")
        g = generator("niah", seed, split, index)
        keys = torch.randint(0, 10, (batch_size, self.digits), generator=g)
        depth = (torch.rand(batch_size, generator=g, dtype=torch.float64) if self.depth is None
                 else torch.full((batch_size,), self.depth, dtype=torch.float64))
        pos = self._snap((depth * H).floor().long().clamp(max=H), H)
        n_fill = len(self._filler_bytes(split))
        offset = torch.randint(0, n_fill, (batch_size,), generator=g) if self.filler == "stdlib" \
            else torch.zeros(batch_size, dtype=torch.int64)
        answers = ["".join(map(str, k)) for k in keys.tolist()]
        needles = [(self._distractors(g, p, k, H) if self.needles > 1 else []) + [(p, k)]
                   for p, k in zip(pos.tolist(), answers)]
        return {"keys": answers, "pos": pos.tolist(), "needles": needles,
                "offset": offset.tolist(), "H": H, "T": seq_len}

    def _snap(self, pos: torch.Tensor, H: int) -> torch.Tensor:
        """For the ``pattern`` filler: ``pos`` moved back to a sentence boundary."""
        if self.filler != "pattern":
            return pos
        bounds = np.flatnonzero(self._pattern == ord(".")) + 2  # after ". "
        period = len(self._pattern)
        starts = np.concatenate([[0], bounds[bounds < period]])
        p = pos.numpy()
        snapped = (p // period) * period + starts[np.searchsorted(starts, p % period, "right") - 1]
        return torch.from_numpy(np.minimum(snapped, H))

    def _distractors(self, g: torch.Generator, p: int, key: str,
                     H: int) -> list[tuple[int, str]]:
        """``needles − 1`` ``(position ≤ p, key ≠ key)`` pairs in order, keys distinct."""
        keys: list[str] = []
        while len(keys) < self.needles - 1:
            k = "".join(map(str, torch.randint(0, 10, (self.digits,), generator=g).tolist()))
            if k != key and k not in keys:
                keys.append(k)
        at = (torch.rand(self.needles - 1, generator=g, dtype=torch.float64) * p).floor().long()
        return list(zip(sorted(self._snap(at, H).tolist()), keys))

    def _row(self, split: str, lay: dict[str, Any], r: int, a: int, b: int) -> np.ndarray:
        """Bytes ``[a, b)`` of row ``r`` (``0 ≤ a ≤ b ≤ T``), computed segment by segment."""
        H, key = lay["H"], lay["keys"][r].encode()
        fill = self._filler_bytes(split)
        tail = np.frombuffer(QUERY + key, dtype=np.uint8)
        ln = self.needle_len
        out = np.empty(b - a, dtype=np.uint8)

        def put(seg_start: int, seg_end: int, values) -> None:  # values(i0, i1): segment-local
            lo, hi = max(a, seg_start), min(b, seg_end)
            if lo < hi:
                out[lo - a:hi - a] = values(lo - seg_start, hi - seg_start)

        def filler(f0: int, f1: int) -> np.ndarray:
            return fill[(lay["offset"][r] + np.arange(f0, f1)) % len(fill)]

        f, s = 0, 0  # filler bytes and sequence bytes placed so far
        for p, k in lay["needles"][r]:
            needle = np.frombuffer(NEEDLE.replace(b"{key}", k.encode()), dtype=np.uint8)
            put(s, s + p - f, lambda i, j, f=f: filler(f + i, f + j))
            s += p - f
            put(s, s + ln, lambda i, j, needle=needle: needle[i:j])
            f, s = p, s + ln
        put(s, s + H - f, lambda i, j, f=f: filler(f + i, f + j))
        put(s + H - f, lay["T"], lambda i, j: tail[i:j])
        return out

    def answer_start(self, seq_len: int) -> int:
        """Position of the first key digit: ``T − digits``."""
        return seq_len - self.digits

    def pieces(self, split: str, index: int, *, batch_size: int, seq_len: int, seed: int = 0,
               chunk: int | None = None) -> Iterator[Batch]:
        """The batch ``(split, index, seed)`` as consecutive pieces of ≤ ``chunk`` tokens.

        Targets are next bytes; the mask is true at the ``digits`` positions
        whose next byte is a key digit (the last byte of ``QUERY`` and the
        digits but the last).
        """
        lay = self.layout(split, index, batch_size=batch_size, seq_len=seq_len, seed=seed)
        T = seq_len
        chunk = T if chunk is None else check_int("niah", "stream_chunk", chunk)
        first = self.answer_start(T) - 1  # predicts digit 0
        for a in range(0, T, chunk):
            b = min(a + chunk, T)
            end = min(b + 1, T)
            rows = (np.stack([self._row(split, lay, r, a, end) for r in range(batch_size)])
                    if batch_size else np.zeros((0, end - a), dtype=np.uint8))
            win = torch.from_numpy(rows.astype(np.int64))  # (B, ≤ b − a + 1)
            if win.shape[1] < b - a + 1:  # the last target lies past the end: pad
                win = torch.cat([win, torch.zeros(batch_size, 1, dtype=torch.int64)], 1)
            t = torch.arange(a, b)
            mask = ((t >= first) & (t < T - 1)).expand(batch_size, -1)
            yield make_batch(win[:, :-1], win[:, 1:], mask)

    def batch(self, split: str, index: int, *, batch_size: int, seq_len: int,
              seed: int = 0) -> Batch:
        """One piece of the whole sequence; with ``train_loss="all"`` a ``train`` batch counts
        every next byte (language modelling of the haystack, the key digits included)."""
        (out,) = self.pieces(split, index, batch_size=batch_size, seq_len=seq_len, seed=seed)
        if split == "train" and self.train_loss == "all":
            out["mask"] = torch.ones_like(out["mask"])
            out["mask"][:, -1] = False  # its target lies past the end
        return out

    def evaluate(self, model: Any, *, device: torch.device | str = "cpu", batch_size: int,
                 seq_len: int, batches: int, seed: int = 0,
                 stream_chunk: int | None = None) -> dict[str, float]:
        """``{"exact_match", "accuracy", "loss"}`` over validation batches ``0 … batches−1``,
        each streamed in pieces of ``stream_chunk`` tokens with the model's state carried."""
        streams = (self.pieces("validation", i, batch_size=batch_size, seq_len=seq_len,
                               seed=seed, chunk=stream_chunk) for i in range(batches))
        return accuracy_metrics(evaluate_streams(model, streams, device=device))
