"""Experiment 2: language modelling at equal parameter count and token budget.

Every model of ``lm.toml`` trains on the embedded corpus (``stdlib`` bytes) with
the same ``[train]`` settings and seeds; validation bits/byte is recorded every
``eval_every`` steps (the trainer's fixed validation windows). The trained runs
are shared with experiment 1 (:mod:`.reading`).
"""

from __future__ import annotations

from typing import Any

from .base import (Config, Figure, Section, Table, TrainedRun, Workspace, fmt, mean_std,
                   spec_files)
from .plots import plot_lines

NAME = "lm"
TITLE = "Language modelling at equal size and token budget"

TRAIN_KEYS = {"steps": int, "batch_size": int, "seq_len": int, "lr": float,
              "warmup_steps": int, "eval_every": int, "eval_batches": int}


def settings(cfg: Config) -> dict[str, Any]:
    """The models (label → spec path), the shared training overrides and the seeds."""
    train = {f"train.{k}": cfg.typed(f"train.{k}", t, min=0) for k, t in TRAIN_KEYS.items()}
    return {"models": spec_files(cfg), "train": train, "seeds": cfg.seeds}


def train_all(ws: Workspace, s: dict[str, Any]) -> dict[str, list[TrainedRun]]:
    """label → the trained run of every seed (cached: shared with :mod:`.reading`)."""
    return {label: [ws.train(f"lm-{_slug(label)}", path, seed=seed, overrides=s["train"],
                             data="stdlib")
                    for seed in s["seeds"]]
            for label, path in s["models"].items()}


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")


def tokens_per_step(train: dict[str, Any]) -> int:
    return int(train["train.batch_size"] * train["train.seq_len"])


def run(ws: Workspace, cfg: Config) -> Section:
    s = settings(cfg)
    cfg.check_all_read()
    runs = train_all(ws, s)
    per_step = tokens_per_step(s["train"])
    curves, rows, raw = {}, [], {}
    for label, seeds in runs.items():
        steps = [r["step"] for r in seeds[0].history]
        curves[label] = ([st * per_step for st in steps],
                         [[r["eval/bpb"] for r in run.history] for run in seeds])
        final = [run.history[-1]["eval/bpb"] for run in seeds]
        tok_s = [s["train"]["train.steps"] * per_step / run.seconds for run in seeds]
        rows.append([label, f"{seeds[0].parameters:,}", fmt(final), fmt(tok_s, 0),
                     fmt([run.seconds / 60 for run in seeds], 1)])
        raw[label] = {"parameters": seeds[0].parameters, "final_bpb": final,
                      "tokens_per_s": tok_s, "curve_tokens": curves[label][0],
                      "curve_bpb": curves[label][1]}
    fig = plot_lines(ws.figure_path(NAME, "bpb-vs-tokens.png"), curves,
                     xlabel="training tokens", ylabel="validation bits/byte",
                     title="Validation bits/byte during training (mean ± std over seeds)")
    t = s["train"]
    return Section(
        name=NAME, title=TITLE,
        question=("Do the memory models learn the language as well as a Transformer at the "
                  "same size and token budget? Titans (arXiv 2501.00663, §5) and NL (arXiv "
                  "2512.24695, §9) report lower perplexity for Titans and HOPE than for "
                  "Transformer++ and the DeltaNet family, with models of hundreds of millions "
                  "to ~1.3B parameters trained on billions of tokens."),
        setup=(f"{len(runs)} models of ≈{_params_range(runs)} parameters over bytes, each "
               f"trained {t['train.steps']} steps of {t['train.batch_size']}×{t['train.seq_len']} "
               f"bytes ({t['train.steps'] * per_step:,} tokens) of the stdlib corpus, AdamW at "
               f"lr {t['train.lr']} (cosine, {t['train.warmup_steps']} warm-up steps), seeds "
               f"{_seeds(s['seeds'])}; validation bits/byte on {t['train.eval_batches']} fixed "
               f"batches every {t['train.eval_every']} steps. Specs: "
               + ", ".join(f"`{p.relative_to(cfg.directory)}`" for p in s["models"].values())
               + "."),
        findings=findings(raw),
        tables=[Table(["model", "parameters", "final validation bits/byte", "training tokens/s",
                       "training time (min)"], rows,
                      "After the full token budget; tokens/s on this machine.")],
        figures=[Figure(f"{NAME}/{fig.name}", "Validation bits/byte against training tokens.")],
        raw=raw)


def _params_range(runs: dict[str, list[TrainedRun]]) -> str:
    n = [r[0].parameters for r in runs.values()]
    lo, hi = min(n) / 1e6, max(n) / 1e6
    return f"{lo:.2f}M" if abs(hi - lo) < 0.005 else f"{lo:.2f}–{hi:.2f}M"


def _seeds(seeds: list[int]) -> str:
    return ", ".join(str(x) for x in seeds)


def findings(raw: dict[str, dict[str, Any]]) -> list[str]:
    """Ranking by final bits/byte, and whether the gaps exceed the seeds' spread."""
    order = sorted(raw, key=lambda k: mean_std(raw[k]["final_bpb"])[0])
    if not order:
        return []
    best = order[0]
    out = [f"Lowest final validation bits/byte: {best} ({fmt(raw[best]['final_bpb'])}); order "
           + " < ".join(order) + "."]
    for other in order[1:]:
        (m0, s0), (m1, s1) = mean_std(raw[best]["final_bpb"]), mean_std(raw[other]["final_bpb"])
        gap = m1 - m0
        out.append(f"{other} is {gap:.3f} bits/byte behind {best}"
                   + (" — larger than the seeds' spread." if gap > s0 + s1
                      else " — within the seeds' spread, so not a clear difference."))
    hope = next((k for k in raw if k.lower().startswith("hope")), None)
    tf = next((k for k in raw if k.lower().startswith("transformer")), None)
    if hope and tf:
        mh, mt = mean_std(raw[hope]["final_bpb"])[0], mean_std(raw[tf]["final_bpb"])[0]
        verdict = ("agrees with" if mh < mt else "does not reproduce")
        out.append(f"HOPE {'beats' if mh < mt else 'trails'} the sliding-window Transformer here "
                   f"({mh:.3f} vs {mt:.3f}), which {verdict} the papers' ordering; at this size "
                   "and budget (minutes of CPU, ~300k tokens) the models are far from converged, "
                   "so the comparison speaks to early learning speed more than to capacity.")
    return out
