"""Experiment 1: learning while reading — bits/byte against position in long documents.

The models of experiment 2 (:mod:`.lm`, trained on 128-byte windows) read the
longest held-out files of the embedded corpus, ``doc_len`` bytes each, streamed
in pieces of ``stream_chunk`` with the fast state carried. For position bucket
``b`` the score is ``bpb_b = (1/(N_b ln 2)) Σ_{t ∈ b} −ln p(x_{t+1} | x_{≤t})``
over the bucket's positions of all files. A model that learns in context should
keep lowering it past the training length; a sliding-window Transformer cannot
use anything older than its window.
"""

from __future__ import annotations

import math
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import lm
from .base import Config, ExperimentError, Figure, Section, Table, Workspace, fmt, mean_std
from .plots import plot_lines

NAME = "reading"
TITLE = "Learning while reading: loss against position, far past the training length"


def held_out_documents(count: int, length: int) -> tuple[list[str], torch.Tensor]:
    """The ``count`` longest validation files of the ``stdlib`` corpus (ties by name),
    their first ``length`` + 1 bytes as ``(count, length + 1)`` ids."""
    from nlframe_plugins.data.corpus import split_files
    from nlframe_plugins.data.stdlib import stdlib_files

    root = Path(sysconfig.get_paths()["stdlib"])
    _, val = split_files(stdlib_files(root), 0.05)  # the corpus's own split
    sizes = sorted(((root / p).stat().st_size, p) for p in val)
    long = [p for size, p in sorted(sizes, key=lambda x: (-x[0], x[1])) if size > length]
    if len(long) < count:
        raise ExperimentError(f"reading: only {len(long)} held-out files are longer than "
                              f"{length} bytes; lower docs or doc_len")
    picked = long[:count]
    rows = [np.frombuffer((root / p).read_bytes()[:length + 1], dtype=np.uint8) for p in picked]
    return picked, torch.from_numpy(np.stack(rows).astype(np.int64))


def bucket_edges(length: int, per_octave: int, first: int = 16) -> list[int]:
    """Position bucket edges ``[0, first, …, length]``, ``per_octave`` buckets per doubling."""
    edges = {0, length}
    j = 0
    while True:
        e = int(round(first * 2 ** (j / per_octave)))
        if e >= length:
            break
        edges.add(e)
        j += 1
    return sorted(edges)


@torch.no_grad()
def position_nll(model, docs: torch.Tensor, stream_chunk: int) -> np.ndarray:
    """``Σ_docs −ln p(x_{t+1} | x_{≤t})`` at every position ``t`` (nats), streaming."""
    x, y = docs[:, :-1], docs[:, 1:]
    total = np.zeros(x.shape[1])
    state = None
    for a in range(0, x.shape[1], stream_chunk):
        logits, state = model(x[:, a:a + stream_chunk], state=state)
        nll = F.cross_entropy(logits.float().transpose(1, 2), y[:, a:a + stream_chunk],
                              reduction="none")
        if not torch.isfinite(nll).all():
            raise FloatingPointError(f"non-finite loss at positions {a}…{a + stream_chunk}")
        total[a:a + nll.shape[1]] = nll.double().sum(0).numpy()
    return total


def bucketed_bpb(total: np.ndarray, docs: int, edges: list[int]) -> list[float]:
    """Mean bits/byte in each bucket ``[edges[i], edges[i+1])``."""
    return [float(total[a:b].sum() / ((b - a) * docs * math.log(2)))
            for a, b in zip(edges[:-1], edges[1:])]


def run(ws: Workspace, cfg: Config) -> Section:
    docs_n = cfg.typed("docs", int, min=1)
    length = cfg.typed("doc_len", int, min=2)
    chunk = cfg.typed("stream_chunk", int, min=1)
    per_octave = cfg.typed("buckets", int, min=1)
    cfg.check_all_read()
    lm_cfg = Config.load("lm", quick=ws.quick, directory=cfg.directory)
    s = lm.settings(lm_cfg)
    lm_cfg.check_all_read()
    names, docs = held_out_documents(docs_n, length)
    edges = bucket_edges(length, per_octave)
    mids = [math.sqrt(max(a, 1) * b) for a, b in zip(edges[:-1], edges[1:])]
    train_len = s["train"]["train.seq_len"]
    curves, raw = {}, {}
    for label, runs in lm.train_all(ws, s).items():
        per_seed = []
        for run in runs:
            key = {"run": run.path.name, "docs": names, "doc_len": length, "chunk": chunk}
            total = ws.unit("reading-nll", key, lambda: position_nll(
                run.model, docs, chunk).tolist())
            per_seed.append(bucketed_bpb(np.asarray(total), docs_n, edges))
        curves[label] = (mids, per_seed)
        raw[label] = {"bucket_edges": edges, "bpb": per_seed}
    fig = plot_lines(ws.figure_path(NAME, "bpb-vs-position.png"), curves,
                     xlabel="position in the document (bytes)", ylabel="bits/byte", logx=True,
                     title=f"Held-out files of {length:,} bytes; trained on {train_len}-byte "
                           "windows (dotted)", vline=train_len)
    at_train = _bucket_of(edges, train_len)
    rows = [[label, fmt([r[0] for r in raw[label]["bpb"]]),
             fmt([r[at_train] for r in raw[label]["bpb"]]),
             fmt([r[-1] for r in raw[label]["bpb"]]),
             fmt([r[at_train] - r[-1] for r in raw[label]["bpb"]])] for label in raw]
    cols = ["model", f"bpb at 0–{edges[1]}", f"bpb at {edges[at_train]}–{edges[at_train + 1]}",
            f"bpb at {edges[-2]:,}–{edges[-1]:,}", "drop after the training length"]
    return Section(
        name=NAME, title=TITLE,
        question=("Does the loss keep falling with position far beyond the training window? "
                  "This is the central claim of Nested Learning (arXiv 2512.24695 §1, §8): a "
                  "model whose levels keep learning in context should predict later parts of a "
                  "long document better than earlier ones, while attention restricted to a "
                  "window cannot use what it has stopped seeing."),
        setup=(f"The models of [experiment 2](#{_anchor(lm.TITLE)}) (seeds "
               f"{', '.join(map(str, s['seeds']))}), trained on {train_len}-byte windows, read "
               f"the {docs_n} longest held-out (validation) files of the stdlib corpus, the first "
               f"{length:,} bytes of each ({length // train_len}× the training length), streamed "
               f"in pieces of {chunk} bytes with the state carried. Bits/byte per position "
               f"bucket ({per_octave} per doubling of the position), averaged over the files."),
        findings=findings(raw, at_train, edges, train_len),
        tables=[Table(cols, rows, "Mean ± std over seeds; the last column is the bucket at the "
                                  "training length minus the last bucket (positive: still "
                                  "improving).")],
        figures=[Figure(f"{NAME}/{fig.name}", "Bits/byte against position (log scale); band: ± "
                                              "one std over seeds.")],
        raw=raw)


def _anchor(title: str) -> str:
    from .page import _anchor as anchor

    return anchor(title)


def _bucket_of(edges: list[int], position: int) -> int:
    """Index of the bucket holding ``position − 1`` (the last position of a training window)."""
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        if a <= position - 1 < b:
            return i
    return len(edges) - 2


def findings(raw: dict[str, Any], at_train: int, edges: list[int], train_len: int) -> list[str]:
    """Per model: does bits/byte keep falling after the training length, beyond the spread?"""
    out = []
    falling = []
    for label, r in raw.items():
        drops = [s[at_train] - s[-1] for s in r["bpb"]]
        m, sd = mean_std(drops)
        if m > sd and m > 0:
            falling.append(label)
            out.append(f"{label}: bits/byte keeps falling after the training length — "
                       f"{m:.3f} ± {sd:.3f} lower at {edges[-2]:,}–{edges[-1]:,} than at "
                       f"position ~{train_len}.")
        elif m < -sd:
            out.append(f"{label}: bits/byte rises after the training length ({-m:.3f} ± {sd:.3f} "
                       "higher at the end): it does not keep what it read, or degrades.")
        else:
            out.append(f"{label}: no change beyond the seeds' spread after the training length "
                       f"({m:+.3f} ± {sd:.3f}).")
    memory = [k for k in raw if not k.lower().startswith("transformer")]
    if falling and all(k in memory for k in falling):
        out.append("Only models with in-context memory improve past the window, which agrees "
                   "with the paper's claim at this small scale.")
    elif not any(k in memory for k in falling):
        out.append("No memory model improves past the training length here, which does not "
                   "reproduce the paper's claim at this scale; with ~300k training tokens the "
                   "in-context levels may not yet have learned to write useful memories.")
    return out
