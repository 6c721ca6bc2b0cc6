"""Experiment 4: needle-in-a-haystack accuracy from 1K to 1M streamed tokens, peak memory
per length, and several needles per haystack (answer the latest) as a stress test."""

from __future__ import annotations

import math
from typing import Any, Callable

from .base import Config, ExperimentError, Figure, Section, Table, Workspace, fmt, mean_std

NAME = "niah"
TITLE = "Needle in a haystack up to a million tokens"

QUESTION = """Can a model trained on short haystacks retrieve a passkey hidden in a
haystack thousands of times longer, fed in pieces with its state carried, and
does its memory stay flat as the haystack grows? The Titans and Nested
Learning papers report that their neural-memory models keep high
needle-in-a-haystack (and BABILong) accuracy at contexts of millions of tokens,
where attention limited to a window, or a linear-attention state, degrades.
Here the haystack is byte-level filler with a 5-digit passkey; the stress test
hides several passkeys and asks for the latest one, as BABILong's facts that
supersede earlier ones."""


def _lengths(cfg: Config, table: str) -> tuple[list[int], list[int]]:
    lengths, rows = cfg[f"{table}.lengths"], cfg[f"{table}.rows"]
    if (not lengths or len(lengths) != len(rows) or lengths != sorted(lengths)
            or not all(isinstance(v, int) and v > 0 for v in lengths + rows)):
        raise ExperimentError(f"{cfg.source}: {table}.lengths must be increasing positive ints "
                              f"and {table}.rows as many positive ints")
    return lengths, rows


def model_table(cfg: Config) -> dict[str, dict[str, Any]]:
    """The ``[models.<label>]`` tables (``spec`` relative to the config, ``overrides``)."""
    models = cfg["models"]
    if not models or not all(isinstance(m, dict) and set(m) == {"spec", "overrides"}
                             for m in models.values()):
        raise ExperimentError(f"{cfg.source}: models: each model needs exactly spec and overrides")
    return models


def measure_peak(fn: Callable[[], dict]) -> tuple[dict, float]:
    """``fn()`` and the peak resident memory it added (MiB) over the memory before it.

    On Linux the kernel's high-water mark is reset first (``/proc/self/clear_refs``);
    elsewhere the increase of the monotonic ``ru_maxrss`` is returned.
    """
    from ..bench.model import peak_rss_mb

    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        before = _rss_mb()
    except OSError:
        before = peak_rss_mb()
    out = fn()
    return out, max(0.0, peak_rss_mb() - before)


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**10
    raise OSError("no VmRSS")


def _evaluate(ws: Workspace, run, label: str, seed: int, *, length: int, rows: int,
              needles: int, digits: int, batch: int, chunk: int) -> dict[str, float]:
    from ..datasets import open_data

    def compute() -> dict[str, float]:
        ws.echo(f"  eval {label} (seed {seed}) at {length} tokens, {needles} needle(s)")
        data = open_data("niah", digits=digits, needles=needles)
        bs = min(batch, rows)
        m, mb = measure_peak(lambda: data.evaluate(
            run.model, device=ws.device, batch_size=bs, seq_len=length,
            batches=math.ceil(rows / bs), seed=seed, stream_chunk=chunk))
        return {"exact_match": m["exact_match"], "accuracy": m["accuracy"], "peak_mb": mb}

    key = {"run": run.path.name, "length": length, "rows": rows, "needles": needles,
           "digits": digits, "batch": batch, "chunk": chunk}
    return ws.unit("niah-eval", key, compute)


def run(ws: Workspace, cfg: Config) -> Section:
    seeds, models = cfg.seeds, model_table(cfg)
    digits = cfg.typed("digits", int, min=1)
    chunk = cfg.typed("stream_chunk", int, min=1)
    train = {k: cfg.typed(f"train.{k}", t, min=m) for k, t, m in
             [("steps", int, 1), ("batch_size", int, 1), ("seq_len", int, 1), ("lr", float, 0),
              ("warmup_steps", int, 0), ("needles", int, 1)]}
    train["loss"] = cfg.typed("train.loss", str)
    lengths, rows = _lengths(cfg, "eval")
    batch = cfg.typed("eval.batch_size", int, min=1)
    s_needles = cfg.typed("stress.needles", int, min=2)
    s_lengths, s_rows = _lengths(cfg, "stress")
    cfg.check_all_read()

    overrides = {"train.steps": train["steps"], "train.batch_size": train["batch_size"],
                 "train.seq_len": train["seq_len"], "train.lr": train["lr"],
                 "train.warmup_steps": train["warmup_steps"], "train.eval_every": train["steps"],
                 "train.eval_batches": 1, "train.log_every": train["steps"],
                 "train.checkpoint_every": train["steps"]}
    acc: dict[str, dict[str, list]] = {}  # model -> measure -> per-seed list over lengths
    params: dict[str, int] = {}
    for label, m in models.items():
        acc[label] = {"exact_match": [], "accuracy": [], "peak_mb": [], "stress": [],
                      "single": []}
        for s in seeds:
            tr = ws.train(label, cfg.directory / m["spec"], seed=s,
                          overrides={**overrides, **m["overrides"]}, data="niah",
                          data_options={"digits": digits, "needles": train["needles"],
                                        "train_loss": train["loss"]})
            params[label] = tr.parameters
            res = [_evaluate(ws, tr, label, s, length=L, rows=r, needles=1, digits=digits,
                             batch=batch, chunk=chunk) for L, r in zip(lengths, rows)]
            for k in ("exact_match", "accuracy", "peak_mb"):
                acc[label][k].append([x[k] for x in res])
            for n, key in ((s_needles, "stress"), (1, "single")):
                acc[label][key].append([_evaluate(ws, tr, label, s, length=L, rows=r, needles=n,
                                                  digits=digits, batch=batch,
                                                  chunk=chunk)["exact_match"]
                                        for L, r in zip(s_lengths, s_rows)])
    return _section(ws, acc, params, seeds=seeds, train=train, lengths=lengths, rows=rows,
                    s_needles=s_needles, s_lengths=s_lengths, s_rows=s_rows, chunk=chunk,
                    digits=digits, batch=batch)


def _k(n: int) -> str:
    return f"{n // 2**20}M" if n >= 2**20 and n % 2**20 == 0 else (
        f"{n // 1024}K" if n % 1024 == 0 else str(n))


def _col(per_seed: list[list[float]], i: int) -> list[float]:
    return [run[i] for run in per_seed]


def _section(ws: Workspace, acc, params, *, seeds, train, lengths, rows, s_needles, s_lengths,
             s_rows, chunk, digits, batch) -> Section:
    from .plots import plot_lines

    series = {m: (lengths, a["exact_match"]) for m, a in acc.items()}
    plot_lines(ws.figure_path(NAME, "accuracy.png"), series, xlabel="haystack length (tokens)",
               ylabel="exact match", title="Passkey retrieval vs haystack length", logx=True)
    plot_lines(ws.figure_path(NAME, "memory.png"),
               {m: (lengths, a["peak_mb"]) for m, a in acc.items()},
               xlabel="haystack length (tokens)", ylabel="peak memory added (MiB)",
               title="Peak resident memory of the streamed evaluation", logx=True)
    cols = ["model"] + [_k(L) for L in lengths]
    tables = [
        Table(cols, [[m] + [fmt(_col(a["exact_match"], i), percent=True)
                            for i in range(len(lengths))] for m, a in acc.items()],
              "Exact match (all 5 digits right) by haystack length."),
        Table(cols, [[m] + [fmt(_col(a["accuracy"], i), percent=True)
                            for i in range(len(lengths))] for m, a in acc.items()],
              "Digit accuracy by haystack length (chance 10%)."),
        Table(cols, [[m] + [fmt(_col(a["peak_mb"], i), digits=1) for i in range(len(lengths))]
                     for m, a in acc.items()], "Peak memory added by the evaluation (MiB)."),
        Table(["model"] + [f"{_k(L)}: 1 / {s_needles} needles" for L in s_lengths],
              [[m] + [f"{fmt(_col(a['single'], i), percent=True)} / "
                      f"{fmt(_col(a['stress'], i), percent=True)}" for i in range(len(s_lengths))]
               for m, a in acc.items()],
              f"Stress test: exact match with one needle vs {s_needles} (answer the latest)."),
    ]
    setup = (f"Models: {', '.join(f'{m} ({params[m]:,} parameters)' for m in acc)}. Each is "
             f"trained for {train['steps']} steps of batch {train['batch_size']} × "
             f"{train['seq_len']} bytes (lr {train['lr']}) on haystacks with {train['needles']} "
             f"needle(s), the loss counted "
             + ("on every next byte" if train["loss"] == "all" else "on the answer digits only")
             + f", then evaluated at lengths "
             f"{', '.join(f'{_k(L)} ({r} row(s))' for L, r in zip(lengths, rows))} per seed, "
             f"streamed in pieces of {chunk} tokens (batch ≤ {batch}) with the state carried; "
             f"{digits}-digit passkeys at uniform depth. Peak memory: the rise of the process's "
             f"resident high-water mark during each evaluation, reset before it "
             f"(/proc/self/clear_refs). Stress test: {s_needles} needles with distinct keys, "
             f"the latest asked. Seeds {', '.join(map(str, seeds))}.")
    return Section(name=NAME, title=TITLE, question=QUESTION, setup=setup,
                   findings=findings(acc, lengths, s_lengths, s_needles, chunk), tables=tables,
                   figures=[Figure(f"{NAME}/accuracy.png", "Exact match vs haystack length "
                                   "(mean ± std over seeds)."),
                            Figure(f"{NAME}/memory.png", "Peak memory added vs haystack length.")],
                   raw={"lengths": lengths, "stress_lengths": s_lengths, "parameters": params,
                        "per_seed": acc})


DIGIT_CHANCE = 0.1


def findings(acc: dict[str, dict[str, list]], lengths: list[int], s_lengths: list[int],
             s_needles: int, chunk: int) -> list[str]:
    """Sentences computed from the per-seed numbers ``acc[model][measure][seed][length]``.

    When no model retrieves at the shortest length (exact match ≤ 5% and digit accuracy
    within 10 points of chance) the accuracy comparisons are left out: there is nothing
    to compare. Memory is compared from the first length of at least one ``chunk``
    (shorter haystacks use smaller pieces)."""
    start = next((i for i, L in enumerate(lengths) if L >= chunk), len(lengths) - 1)
    memory = memory_finding({m: [run[start:] for run in a["peak_mb"]] for m, a in acc.items()},
                            lengths[start:])
    if not any(mean_std(_col(a["exact_match"], 0))[0] > 0.05
               or mean_std(_col(a["accuracy"], 0))[0] > DIGIT_CHANCE + 0.1 for a in acc.values()):
        digits = [mean_std(_col(a["accuracy"], 0))[0] for a in acc.values()]
        return [f"No model learnt to retrieve the passkey at this training budget: at "
                f"{_k(lengths[0])} tokens digit accuracy is {100 * min(digits):.0f}–"
                f"{100 * max(digits):.0f}% (chance {100 * DIGIT_CHANCE:.0f}%) and exact match "
                "near 0, so the accuracy tables show chance level, not how retrieval scales "
                "with length. The papers train on far more data before testing retrieval; "
                "this run does not reproduce their needle results.", memory]
    out = []
    last = {m: mean_std(_col(a["exact_match"], -1)) for m, a in acc.items()}
    ranked = sorted(last, key=lambda m: -last[m][0])
    best = ranked[0]
    if len(ranked) > 1:
        second = ranked[1]
        gap = last[best][0] - last[second][0]
        clear = gap > max(last[best][1], last[second][1])
        out.append(f"At {_k(lengths[-1])} tokens {best} is best ({100 * last[best][0]:.0f}% exact "
                   f"match) ahead of {second} ({100 * last[second][0]:.0f}%), a gap "
                   f"{'larger' if clear else 'no larger'} than the spread over seeds.")
        agree = best in ("HOPE", "Titans") and clear
        out.append(("This agrees with the papers, where the neural-memory models retrieve best "
                    "at the longest contexts." if agree else
                    "The papers find the neural-memory models (HOPE, Titans) best at the longest "
                    "contexts; here they are not clearly so, likely because a few hundred steps on short "
                    "haystacks do not teach them to write one needle and keep it."))
    for m, a in acc.items():
        first, end = mean_std(_col(a["exact_match"], 0)), last[m]
        drop = first[0] - end[0]
        trend = ("falls" if drop > max(0.05, first[1], end[1]) else
                 "rises" if -drop > max(0.05, first[1], end[1]) else "holds")
        out.append(f"{m}: exact match {trend} from {100 * first[0]:.0f}% at {_k(lengths[0])} to "
                   f"{100 * end[0]:.0f}% at {_k(lengths[-1])}.")
    out.append(memory)
    for m, a in acc.items():
        one = mean_std([v for run in a["single"] for v in run])[0]
        many = mean_std([v for run in a["stress"] for v in run])[0]
        out.append(f"{m} with {s_needles} needles: {100 * many:.0f}% exact match vs "
                   f"{100 * one:.0f}% with one, over {', '.join(map(_k, s_lengths))} "
                   f"({'distractors hurt' if one - many > 0.05 else 'no clear cost'}).")
    return out


def memory_finding(peak: dict[str, list[list[float]]], lengths: list[int],
                   slack_mb: float = 32.0) -> str:
    """Whether each model's peak memory at the longest length stays within ``slack_mb`` plus
    50% of its value at the shortest (flat), or grows beyond."""
    grows = []
    for m, per_seed in peak.items():
        small, large = mean_std(_col(per_seed, 0))[0], mean_std(_col(per_seed, -1))[0]
        if large > 1.5 * small + slack_mb:
            grows.append(f"{m} ({small:.0f} → {large:.0f} MiB)")
    span = f"from {_k(lengths[0])} to {_k(lengths[-1])} tokens"
    if not grows:
        return (f"Peak memory stays flat {span} for every model, as streaming with a "
                f"fixed-size state should (the papers' claim of constant memory holds).")
    return (f"Peak memory grows {span} for {', '.join(grows)}: a state or cache that grows "
            f"with the sequence, unlike the constant memory the papers describe.")
