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
from .page import anchor
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


@torch.no_grad()
def windowed_nll(model, docs: torch.Tensor, window: int, batch: int = 64) -> np.ndarray:
    """Like :func:`position_nll`, but every ``window`` bytes are read from a fresh state:
    the same positions with no context older than their window's start."""
    x, y = docs[:, :-1], docs[:, 1:]
    N, T = x.shape
    if T % window:
        raise ExperimentError(f"reading: doc_len {T} is not a multiple of the training length "
                              f"{window}")
    xw, yw = x.reshape(-1, window), y.reshape(-1, window)  # (N·T/window, window)
    parts = []
    for a in range(0, xw.shape[0], batch):
        logits, _ = model(xw[a:a + batch])
        parts.append(F.cross_entropy(logits.float().transpose(1, 2), yw[a:a + batch],
                                     reduction="none").double())
    nll = torch.cat(parts)
    if not torch.isfinite(nll).all():
        raise FloatingPointError("non-finite loss in a window read from a fresh state")
    return nll.reshape(N, T).sum(0).numpy()


def run(ws: Workspace, cfg: Config) -> Section:
    docs_n = cfg.typed("docs", int, min=1)
    length = cfg.typed("doc_len", int, min=2)
    chunk = cfg.typed("stream_chunk", int, min=1)
    per_octave = cfg.typed("buckets", int, min=1)
    cfg.check_all_read()
    lm_cfg = Config.load("lm", quick=ws.quick, directory=cfg.directory)
    s = lm.settings(lm_cfg)
    lm_cfg.check_all_read()
    train_len = s["train"]["train.seq_len"]
    names, docs = held_out_documents(docs_n, length)
    edges = bucket_edges(length, per_octave)
    after = [e for e in edges if e >= train_len]  # the buckets past the first window
    mids = [math.sqrt(max(a, 1) * b) for a, b in zip(edges[:-1], edges[1:])]
    mids_after = [math.sqrt(a * b) for a, b in zip(after[:-1], after[1:])]
    curves, gains, raw = {}, {}, {}
    for label, runs in lm.train_all(ws, s).items():
        bpb, gain = [], []
        for run in runs:
            key = {"run": run.path.name, "docs": names, "doc_len": length}
            stream = np.asarray(ws.unit("reading-nll", {**key, "chunk": chunk}, lambda: (
                position_nll(run.model, docs, chunk).tolist())))
            fresh = np.asarray(ws.unit("reading-nll-windowed", {**key, "window": train_len},
                                       lambda: windowed_nll(run.model, docs, train_len).tolist()))
            bpb.append(bucketed_bpb(stream, docs_n, edges))
            gain.append([a - b for a, b in zip(bucketed_bpb(fresh, docs_n, after),
                                               bucketed_bpb(stream, docs_n, after))])
        curves[label], gains[label] = (mids, bpb), (mids_after, gain)
        raw[label] = {"bucket_edges": edges, "bpb": bpb, "gain_edges": after, "gain": gain}
    fig = plot_lines(ws.figure_path(NAME, "bpb-vs-position.png"), curves,
                     xlabel="position in the document (bytes)", ylabel="bits/byte", logx=True,
                     title=f"Held-out files of {length:,} bytes, streamed; trained on "
                           f"{train_len}-byte windows (dotted)", vline=train_len)
    fig2 = plot_lines(ws.figure_path(NAME, "context-gain-vs-position.png"), gains,
                      xlabel="position in the document (bytes)", logx=True, hline=0.0,
                      ylabel="bits/byte saved by the whole stream",
                      title=f"Gain of reading everything before over a fresh state every "
                            f"{train_len} bytes")
    last = f"{after[-2]:,}–{after[-1]:,}"
    rows = [[label, fmt([r[_bucket_of(edges, train_len)] for r in raw[label]["bpb"]]),
             fmt([r[-1] for r in raw[label]["bpb"]]), fmt([g[0] for g in raw[label]["gain"]]),
             fmt([g[-1] for g in raw[label]["gain"]]),
             fmt([g[-1] - g[0] for g in raw[label]["gain"]])] for label in raw]
    cols = ["model", f"bpb at {train_len}", f"bpb at {last}",
            f"gain at {after[0]}–{after[1]}", f"gain at {last}", "growth of the gain"]
    return Section(
        name=NAME, title=TITLE,
        question=("Does a model keep learning from what it reads, far beyond its training "
                  "window? This is the central claim of Nested Learning (arXiv 2512.24695 §1, "
                  "§8): a model whose levels keep learning in context should predict the later "
                  "parts of a long document better for having read the earlier ones, while "
                  "attention restricted to a window cannot use what it has stopped seeing."),
        setup=(f"The models of [experiment 2](#{anchor(lm.TITLE)}) (seeds "
               f"{', '.join(map(str, s['seeds']))}), trained on {train_len}-byte windows, read "
               f"the {docs_n} longest held-out (validation) files of the stdlib corpus, the first "
               f"{length:,} bytes of each ({length // train_len}× the training length), streamed "
               f"in pieces of {chunk} bytes with the state carried. Bits/byte per position "
               f"bucket ({per_octave} per doubling of the position), averaged over the files. "
               "Because later parts of a file are not equally hard as its start, the loss "
               "against position alone mixes content with learning; the **gain** removes the "
               f"content: the same bytes read with a fresh state every {train_len} bytes, minus "
               "the streamed loss. A model that learns while reading has a gain that grows "
               "with position; a sliding window of the training length has a small, constant "
               "one (only the window starts lose context)."),
        findings=findings(raw),
        tables=[Table(cols, rows, "Mean ± std over seeds. Gain: bits/byte with a fresh state "
                                  f"every {train_len} bytes minus bits/byte streamed, at the "
                                  "same positions; growth: the last bucket's gain minus the "
                                  "first's.")],
        figures=[Figure(f"{NAME}/{fig.name}", "Streamed bits/byte against position (log "
                                              "scale); band: ± one std over seeds."),
                 Figure(f"{NAME}/{fig2.name}", "Bits/byte the stream saves over fresh "
                                               f"{train_len}-byte windows, by position.")],
        raw=raw)


def _bucket_of(edges: list[int], position: int) -> int:
    """Index of the bucket holding ``position − 1`` (the last position of a training window)."""
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        if a <= position - 1 < b:
            return i
    return len(edges) - 2


def findings(raw: dict[str, Any]) -> list[str]:
    """Per model: is the streamed loss finite and sensible, and does the gain of reading the
    whole stream grow with position, beyond the seeds' spread?"""
    out, growing = [], []
    for label, r in raw.items():
        growth = mean_std([g[-1] - g[0] for g in r["gain"]])
        end = mean_std([g[-1] for g in r["gain"]])
        if end[0] < -end[1]:
            out.append(f"{label}: by the end the whole stream makes it worse, "
                       f"{-end[0]:.3f} ± {end[1]:.3f} bits/byte above fresh windows"
                       + (": its state degrades over long streams instead of helping."
                          if -end[0] > 0.1 else " (a small loss)."))
        elif growth[0] > growth[1]:
            growing.append(label)
            out.append(f"{label}: the gain of having read everything before grows with "
                       f"position by {growth[0]:.3f} ± {growth[1]:.3f} bits/byte, to "
                       f"{end[0]:.3f} at the end: it keeps learning while it reads.")
        else:
            out.append(f"{label}: its gain does not grow beyond the seeds' spread "
                       f"({growth[0]:+.3f} ± {growth[1]:.3f}); it ends at {end[0]:.3f} bits/byte.")
    memory = [k for k in raw if not k.lower().startswith("transformer")]
    if growing and all(k in memory for k in growing):
        out.append("Only models with in-context memory gain more the longer they read — the "
                   "paper's claim, reproduced at this scale for " + ", ".join(growing) + ".")
    elif not any(k in memory for k in growing):
        out.append("No memory model gains more the longer it reads here, which does not "
                   "reproduce the paper's claim at this scale.")
    hope = next((k for k in raw if k.lower().startswith("hope")), None)
    if hope and hope not in growing:
        out.append("HOPE does not show the growing gain the paper reports; with ~300k "
                   "training tokens its in-context levels may not yet write useful memories.")
    return out
