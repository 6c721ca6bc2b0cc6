"""``tokens:PATH``: a text file or directory as token ids of a BPE tokenizer (``tokenizer=DIR``).

The text is read and split exactly as ``text:PATH`` does (same options:
``val_fraction``, ``suffixes``; see :mod:`.text`), decoded as UTF-8 (bytes
that are not UTF-8 become U+FFFD) and encoded with the ``tokenizer.json`` in
``DIR`` — one made by ``nlframe tokenizer train``, or any ``tokenizers``
file. ``vocab_size`` is the tokenizer's. The ids of each split are cached
(``<cache>/tokens/<key>/``, keyed by the corpus and tokenizer hashes).

Batches are ``B`` windows of ``T + 1`` ids at offsets drawn from
``(seed, split, index)``, targets shifted by one. ``evaluate`` reports
``loss`` (nats per token), ``ppl = e^loss`` and ``bpb = Σ nll / (ln 2 · bytes)``
where ``bytes`` is the length of the text the target tokens decode to, so it
compares with the byte models of ``text``/``stdlib``. Runs record the
tokenizer (path, sha256) in their checkpoint; ``nlframe generate`` decodes
with it.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from nlframe.cache import atomic_write, atomic_write_text, cache_dir
from nlframe.tokenizer import byte_lengths, load_tokenizer, record, text_chunks

from .common import check_split
from .corpus import ByteCorpus, WindowCorpus
from .metrics import evaluate_streams, pieces
from .text import text

__all__ = ["tokens", "TokenCorpus"]

FORMAT = 1
"""Version of the token cache layout; bumping it re-encodes every cached corpus."""

_NEEDS = ("data 'tokens' needs option tokenizer=DIR (a directory with tokenizer.json); "
          "make one with: nlframe tokenizer train text:PATH --vocab 4096 --out DIR")


def tokens(arg: Any = None, *, tokenizer: str | None = None, val_fraction: float = 0.05,
           suffixes: Sequence[str] | str | None = None, verify: bool = True) -> "TokenCorpus":
    """The file or directory ``arg`` (PATH in ``tokens:PATH``) as ids of ``tokenizer``."""
    if arg in (None, ""):
        raise ValueError("data 'tokens' needs a path: write it as tokens:PATH "
                         "(a file or a directory) with --option tokenizer=DIR")
    if not Path(str(arg)).expanduser().exists():
        raise FileNotFoundError(f"data 'tokens': path {str(arg)!r} does not exist")
    if tokenizer in (None, ""):
        raise ValueError(_NEEDS)
    tok, tok_path = load_tokenizer(str(tokenizer))
    corpus = text(arg, val_fraction=val_fraction, suffixes=suffixes, verify=verify)
    return TokenCorpus(corpus, tok, tok_path)


def _encode(corpus: ByteCorpus, tok: Any, rec: dict[str, Any]) -> dict[str, np.ndarray]:
    """The ids of each split, from the cache or encoded now (and cached)."""
    key_src = json.dumps([FORMAT, corpus.manifest["sha256"], corpus.manifest["train_bytes"],
                          rec["sha256"]])
    directory = cache_dir("tokens", hashlib.sha1(key_src.encode()).hexdigest()[:16])
    manifest = directory / "manifest.json"
    try:
        if json.loads(manifest.read_text(encoding="utf-8")) == json.loads(key_src):
            return {s: np.load(directory / f"{s}.npy", mmap_mode="r")
                    for s in ("train", "validation")}
    except (OSError, ValueError):
        pass
    dtype = np.uint16 if rec["vocab_size"] <= 1 << 16 else np.int32
    out = {}
    for split in ("train", "validation"):
        chunks = list(text_chunks(bytes(corpus.split(split))))
        ids = [np.asarray(e.ids, dtype=dtype)
               for e in tok.encode_batch(chunks, add_special_tokens=False)]
        out[split] = np.concatenate(ids) if ids else np.zeros(0, dtype=dtype)
        with atomic_write(directory / f"{split}.npy") as f:
            np.save(f, out[split])
    atomic_write_text(manifest, key_src)
    return out


class TokenCorpus(WindowCorpus):
    """Token-id corpus: windows ``x = ids[s : s+T]``, targets ``ids[s+1 : s+T+1]``."""

    name = "tokens"
    unit = "tokens"

    def __init__(self, corpus: ByteCorpus, tok: Any, tok_path: Path) -> None:
        self.corpus, self.tokenizer = corpus, tok
        self.record = record(tok, tok_path)
        self.vocab_size = self.record["vocab_size"]
        self._bytes = torch.from_numpy(byte_lengths(tok))
        self._splits = _encode(corpus, tok, self.record)

    def split(self, split: str) -> np.ndarray:
        """The token ids of ``split`` (read-only)."""
        check_split(self.name, split)
        return self._splits[split]

    def describe(self) -> dict[str, Any]:
        return {"tokenizer": dict(self.record)}

    def evaluate(self, model: Any, *, device: torch.device | str = "cpu", batch_size: int,
                 seq_len: int, batches: int, seed: int = 0,
                 stream_chunk: int | None = None) -> dict[str, float]:
        """``{"loss", "ppl", "bpb", "tokens", "bytes"}`` over :meth:`eval_windows`; ``bpb``
        divides the nats by ``ln 2`` times the bytes of text the targets decode to."""
        windows = list(self.eval_windows(batch_size=batch_size, seq_len=seq_len, batches=batches))
        n_bytes = sum(int(self._bytes[w["targets"]].sum()) for w in windows)
        t = evaluate_streams(model, (pieces(w, stream_chunk) for w in windows), device=device)
        bpb = t.nll / (math.log(2) * n_bytes) if n_bytes else math.nan
        return {"loss": t.loss, "ppl": math.exp(t.loss), "bpb": bpb, "tokens": float(t.count),
                "bytes": float(n_bytes)}

    def __repr__(self) -> str:
        return (f"TokenCorpus({self.corpus.manifest['options'].get('path')!r}, "
                f"tokenizer={self.record['path']!r}, vocab_size={self.vocab_size}, "
                f"train_tokens={len(self._splits['train'])}, "
                f"validation_tokens={len(self._splits['validation'])})")
