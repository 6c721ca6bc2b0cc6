"""Byte-level corpora cached as a uint8 memmap: the machinery behind ``stdlib`` and ``text:PATH``.

A corpus is a sorted list of files. Each file goes wholly to the train or the
validation split by a stable hash of its relative path
(``sha1(path) / 2^160 < val_fraction`` → validation); a single file is split
by position (its last ``val_fraction`` of bytes is validation). The bytes of
each split are the concatenation of its files in sorted order, train first,
in one file ``data.bin`` under ``<cache>/corpus/<key>/``, described by
``manifest.json`` (file counts, byte counts, sha256 of ``data.bin``, Python
version, a fingerprint of the source files' paths, sizes and mtimes). Both
are written atomically (temporary file + rename, manifest last), and the
corpus is rebuilt whenever the manifest is missing, does not match the
source, or the data fails its checksum.

Tokens are bytes (``vocab_size = 256``); a batch is ``B`` windows of
``T + 1`` bytes at random offsets drawn from ``(seed, split, index)``;
``targets`` are ``tokens`` shifted by one.
"""

from __future__ import annotations

import abc
import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from nlframe.cache import atomic_write, atomic_write_text, cache_dir
from nlframe.interfaces import Batch, DataSource

from .common import check_int, check_split, generator, make_batch
from .metrics import evaluate_streams, lm_metrics, pieces

__all__ = ["ByteCorpus", "open_corpus", "split_files", "list_files", "FORMAT"]

FORMAT = 1
"""Version of the cache layout; bumping it rebuilds every cached corpus."""

_BLOCK = 1 << 20


def _hash_fraction(relpath: str) -> float:
    """``sha1(relpath)`` read as a number in ``[0, 1)``: the same on every machine."""
    return int.from_bytes(hashlib.sha1(relpath.encode()).digest()[:8], "big") / 2.0**64


def split_files(relpaths: Sequence[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """``(train, validation)`` relative paths, each sorted, split by :func:`_hash_fraction`.

    With two or more files both splits are non-empty: if the hash leaves one
    empty, the file nearest the threshold moves over.
    """
    paths = sorted(relpaths)
    val = [p for p in paths if _hash_fraction(p) < val_fraction]
    train = [p for p in paths if _hash_fraction(p) >= val_fraction]
    if len(paths) >= 2 and not val:
        moved = min(train, key=_hash_fraction)
        train.remove(moved)
        val = [moved]
    elif len(paths) >= 2 and not train:
        moved = max(val, key=_hash_fraction)
        val.remove(moved)
        train = [moved]
    return train, val


def _fingerprint(root: Path, relpaths: Sequence[str]) -> str:
    h = hashlib.sha256()
    for rel in relpaths:
        st = (root / rel).stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def _copy_into(out, src: Path, h, start: int = 0, stop: int | None = None) -> int:
    """Append bytes ``[start, stop)`` of ``src`` to ``out``; returns the number copied."""
    n = 0
    with open(src, "rb") as f:
        f.seek(start)
        remaining = math.inf if stop is None else stop - start
        while remaining > 0:
            block = f.read(int(min(_BLOCK, remaining)))
            if not block:
                break
            out.write(block)
            h.update(block)
            n += len(block)
            remaining -= len(block)
    return n


def _build(directory: Path, root: Path, relpaths: Sequence[str], expected: dict[str, Any],
           val_fraction: float, name: str) -> dict[str, Any]:
    """Write ``data.bin`` and ``manifest.json`` atomically; return the manifest."""
    h = hashlib.sha256()
    data = directory / "data.bin"
    single = len(relpaths) == 1
    with atomic_write(data) as out:
        if single:
            size = (root / relpaths[0]).stat().st_size
            n_val = math.ceil(size * val_fraction) if size >= 2 else 0
            train_bytes = _copy_into(out, root / relpaths[0], h, 0, size - n_val)
            val_bytes = _copy_into(out, root / relpaths[0], h, size - n_val, size)
            train, val = list(relpaths), list(relpaths)
        else:
            train, val = split_files(relpaths, val_fraction)
            train_bytes = sum(_copy_into(out, root / p, h) for p in train)
            val_bytes = sum(_copy_into(out, root / p, h) for p in val)
    if train_bytes + val_bytes == 0:
        data.unlink()
        raise ValueError(f"data {name!r}: the source has no bytes ({len(relpaths)} file(s) "
                         f"under {root}, all empty)")
    manifest = {**expected, "files": len(relpaths), "train_files": len(train),
                "validation_files": len(val), "split": "position" if single else "file",
                "bytes": train_bytes + val_bytes, "train_bytes": train_bytes,
                "validation_bytes": val_bytes, "sha256": h.hexdigest()}
    atomic_write_text(directory / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def _valid(directory: Path, expected: dict[str, Any], verify: bool) -> dict[str, Any] | None:
    """The manifest if it matches ``expected`` and ``data.bin`` (size and, if ``verify``, sha256)."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        size = (directory / "data.bin").stat().st_size
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or any(manifest.get(k) != v for k, v in expected.items()):
        return None
    if size != manifest.get("bytes"):
        return None
    if verify and _sha256_file(directory / "data.bin") != manifest.get("sha256"):
        return None
    return manifest


def open_corpus(name: str, root: Path, relpaths: Sequence[str], *, val_fraction: float = 0.05,
                verify: bool = True, options: dict[str, Any] | None = None) -> "ByteCorpus":
    """Open the cached corpus of ``root/relpaths``, building it first if needed.

    ``options`` (JSON-able) are recorded in the manifest and part of the cache
    key, so different options never share a cache entry.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data {name!r}: val_fraction must be in (0, 1), got {val_fraction}")
    if not relpaths:
        raise ValueError(f"data {name!r}: no files found under {root}")
    relpaths = sorted(relpaths)
    expected = {"format": FORMAT, "name": name, "source": str(root),
                "python": ".".join(map(str, sys.version_info[:3])),
                "val_fraction": val_fraction, "options": options or {},
                "fingerprint": _fingerprint(root, relpaths)}
    key_src = json.dumps([FORMAT, name, str(root), val_fraction, options or {}], sort_keys=True)
    key = f"{name}-{hashlib.sha1(key_src.encode()).hexdigest()[:16]}"
    directory = cache_dir("corpus", key)
    manifest = _valid(directory, expected, verify)
    if manifest is None:
        manifest = _build(directory, root, relpaths, expected, val_fraction, name)
    return ByteCorpus(name, directory, manifest)


class WindowCorpus(DataSource):
    """A corpus of one id sequence per split, read as windows ``x = ids[s : s+T]``
    with targets ``ids[s+1 : s+T+1]``. Subclasses give :meth:`split` and ``unit``
    (what an id is, for error messages)."""

    name: str
    unit = "bytes"

    @abc.abstractmethod
    def split(self, split: str) -> np.ndarray:
        """The ids of ``split`` (``"train"`` or ``"validation"``) as a 1-D array."""

    def _windows(self, split: str, starts: torch.Tensor, seq_len: int) -> Batch:
        arr = self.split(split)
        idx = starts.numpy()[:, None] + np.arange(seq_len + 1)  # (B, T+1)
        win = torch.from_numpy(np.asarray(arr[idx], dtype=np.int64))
        return make_batch(win[:, :-1], win[:, 1:])

    def _check_len(self, split: str, seq_len: int) -> int:
        n = len(self.split(split))
        if n < seq_len + 1:
            raise ValueError(f"data {self.name!r}: the {split} split has {n} {self.unit}, too few "
                             f"for seq_len={seq_len} (needs seq_len + 1); use a shorter seq_len "
                             "or a larger corpus")
        return n

    def batch(self, split: str, index: int, *, batch_size: int, seq_len: int,
              seed: int = 0) -> Batch:
        """``B`` windows at offsets uniform in ``[0, n − T)`` drawn from ``(seed, split, index)``."""
        check_int(self.name, "batch_size", batch_size, 0)
        check_int(self.name, "seq_len", seq_len)
        n = self._check_len(split, seq_len)
        g = generator(self.name, seed, split, index)
        starts = torch.randint(0, n - seq_len, (batch_size,), generator=g)
        return self._windows(split, starts, seq_len)

    def eval_windows(self, *, batch_size: int, seq_len: int, batches: int) -> Iterator[Batch]:
        """The deterministic validation windows of :meth:`evaluate`: ``batches · batch_size``
        offsets evenly spaced over the validation split (independent of any seed)."""
        n = self._check_len("validation", seq_len)
        starts = torch.linspace(0, n - seq_len - 1, batches * batch_size,
                                dtype=torch.float64).round().long()
        for chunk in starts.split(batch_size):
            yield self._windows("validation", chunk, seq_len)


class ByteCorpus(WindowCorpus):
    """Byte-level corpus: windows ``x = bytes[s : s+T]``, targets ``bytes[s+1 : s+T+1]``.

    The metric is next-byte cross-entropy ``loss = −(1/N) Σ ln p(x_{t+1} | x_{≤t})``
    in nats, with ``bpb = loss / ln 2`` bits per byte and ``ppl = e^loss``.
    """

    vocab_size = 256

    def __init__(self, name: str, directory: Path, manifest: dict[str, Any]) -> None:
        self.name, self.directory, self.manifest = name, directory, manifest
        n = manifest["bytes"]
        data = np.memmap(directory / "data.bin", dtype=np.uint8, mode="r", shape=(n,))
        t = manifest["train_bytes"]
        self._splits = {"train": data[:t], "validation": data[t:]}

    def split(self, split: str) -> np.ndarray:
        """The bytes of ``split`` as a read-only ``uint8`` memmap view."""
        check_split(self.name, split)
        return self._splits[split]

    def evaluate(self, model: Any, *, device: torch.device | str = "cpu", batch_size: int,
                 seq_len: int, batches: int, seed: int = 0,
                 stream_chunk: int | None = None) -> dict[str, float]:
        """``{"loss", "bpb", "ppl", "tokens"}`` over :meth:`eval_windows` (``seed`` is unused:
        the windows are fixed so numbers compare across runs)."""
        windows = self.eval_windows(batch_size=batch_size, seq_len=seq_len, batches=batches)
        totals = evaluate_streams(model, (pieces(w, stream_chunk) for w in windows),
                                  device=device)
        return lm_metrics(totals)

    def __repr__(self) -> str:
        m = self.manifest
        return (f"ByteCorpus({self.name!r}, files={m['files']}, train_bytes={m['train_bytes']}, "
                f"validation_bytes={m['validation_bytes']})")


def list_files(root: Path, suffixes: Sequence[str] | None = None,
               skip_dirs: Sequence[str] = ()) -> list[str]:
    """Sorted POSIX relative paths of regular files under ``root`` (recursively).

    Hidden files and directories (``.name``) are skipped, as are directories
    named in ``skip_dirs``; with ``suffixes`` only names ending in one of them.
    """
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in skip_dirs)
        for f in filenames:
            if f.startswith(".") or (suffixes and not f.endswith(tuple(suffixes))):
                continue
            full = Path(dirpath) / f
            if full.is_file():
                out.append(full.relative_to(root).as_posix())
    return sorted(out)
