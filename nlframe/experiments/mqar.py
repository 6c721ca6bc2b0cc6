"""Experiment 3: MQAR recall against the number of key–value pairs, model width and
learning rate.

Every model is trained at each learning rate of a sweep (at one number of pairs);
its best learning rate — the one with the highest mean accuracy over the seeds —
is then used for the sweeps over the number of pairs and over the width.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .base import (Config, ExperimentError, Figure, Section, Table, Workspace, fmt, mean_std,
                   spec_files)
from .plots import plot_lines

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

NAME = "mqar"
TITLE = "Associative recall (MQAR): pairs, width and learning rate"

PerX = Mapping[Any, Sequence[float]]
"""Per-seed values at each setting ``x`` of a sweep."""


# -- configuration -------------------------------------------------------------------
def baseline_of(cfg: Config, models: Mapping[str, Path]) -> str:
    """``baseline``: the attention model the recurrent ones are compared with."""
    name = cfg.typed("baseline", str)
    if name not in models:
        raise ExperimentError(f"{cfg.source}: baseline {name!r} is not one of the models "
                              f"({', '.join(models)})")
    return name


def number_list(cfg: Config, key: str, kind: type) -> list:
    """A non-empty list of positive numbers of ``kind`` at ``key``."""
    values = cfg[key]
    if (not isinstance(values, list) or not values
            or not all(isinstance(v, (kind, int)) and not isinstance(v, bool) and v > 0
                       for v in values)):
        raise ExperimentError(f"{cfg.source}: {key}: expected a non-empty list of positive "
                              f"{kind.__name__}s, got {values!r}")
    return [kind(v) for v in values]


def spec_dim(spec: Path) -> int:
    """The ``model.dim`` written in a spec file."""
    return int(tomllib.loads(spec.read_text())["model"]["dim"])


def train_overrides(cfg: Config, seq_len: int | None = None) -> dict[str, Any]:
    """``[train]`` as spec overrides, evaluated (and checkpointed) only at the last step;
    ``train.seq_len`` is read unless ``seq_len`` is given."""
    steps = cfg.typed("train.steps", int, min=1)
    seq_len = cfg.typed("train.seq_len", int, min=2) if seq_len is None else seq_len
    return {"train.steps": steps, "train.batch_size": cfg.typed("train.batch_size", int, min=1),
            "train.seq_len": seq_len,
            "train.warmup_steps": cfg.typed("train.warmup_steps", int, min=0),
            "train.eval_batches": cfg.typed("train.eval_batches", int, min=1),
            "train.eval_every": steps, "train.log_every": steps, "train.checkpoint_every": steps}


def _settings(cfg: Config) -> dict[str, Any]:
    models = spec_files(cfg)
    return {"models": models, "baseline": baseline_of(cfg, models), "seeds": cfg.seeds,
            "train": train_overrides(cfg), "vocab": cfg.typed("data.vocab_size", int, min=5),
            "lrs": number_list(cfg, "lr.values", float),
            "lr_pairs": cfg.typed("lr.num_pairs", int, min=1),
            "pairs": number_list(cfg, "pairs.values", int),
            "dims": number_list(cfg, "width.dims", int)}


# -- pure helpers ----------------------------------------------------------------------
def best_setting(per_x: PerX) -> Any:
    """The ``x`` with the highest mean over seeds (the first of equals)."""
    return max(per_x, key=lambda x: mean_std(per_x[x])[0])


def spread(per_x: PerX) -> float:
    """Highest minus lowest mean over the settings."""
    means = [mean_std(v)[0] for v in per_x.values()]
    return max(means) - min(means)


def change(per_x: PerX) -> float:
    """Mean at the last setting minus mean at the first."""
    xs = list(per_x)
    return mean_std(per_x[xs[-1]])[0] - mean_std(per_x[xs[0]])[0]


def chance(vocab: int) -> float:
    """Accuracy of a uniform guess among the MQAR values (see ``plugins/data/mqar.py``)."""
    return 1 / (vocab - 1 - (vocab - 1) // 2)


def pp(x: float) -> str:
    return f"{100 * x:.1f} pp"


def lr_findings(sweep: Mapping[str, PerX], baseline: str, base_chance: float) -> list[str]:
    """Sentences on the learning-rate sweep: the best lr and sensitivity of each model."""
    best = {m: best_setting(v) for m, v in sweep.items()}
    out = ["Best learning rate (highest mean accuracy over the seeds): " + "; ".join(
        f"{m} {best[m]:g} ({fmt(v[best[m]], percent=True)}, range over the sweep {pp(spread(v))})"
        for m, v in sweep.items()) + "."]
    recurrent = [spread(v) for m, v in sweep.items() if m != baseline]
    if recurrent:
        r, b = sum(recurrent) / len(recurrent), spread(sweep[baseline])
        agree = r > b
        out.append(f"Across the swept learning rates the recurrent models' accuracy varies by "
                   f"{pp(r)} on average, {baseline}'s by {pp(b)}: "
                   + ("the recurrent models are the more learning-rate sensitive, as the papers "
                      "report." if agree else
                      "the recurrent models are not more sensitive here, unlike the papers' "
                      "report (at this small budget all models may still be learning, so the "
                      "sweep measures training speed more than a stability window)."))
    top = max(mean_std(v[best[m]])[0] for m, v in sweep.items())
    if top < 2 * base_chance:
        out.append(f"No model reaches twice the chance level ({100 * base_chance:.1f}%): the "
                   f"task is not learnt at this budget, so the comparisons are weak.")
    return out


def ranking_finding(per_model: Mapping[str, Sequence[float]], where: str) -> str:
    """Which model is best, and whether its lead over the next exceeds the seeds' std."""
    order = sorted(per_model, key=lambda m: -mean_std(per_model[m])[0])
    first = order[0]
    text = f"{where}, the best model is {first} ({fmt(per_model[first], percent=True)})"
    if len(order) == 1:
        return text + "."
    second = order[1]
    (m1, s1), (m2, s2) = mean_std(per_model[first]), mean_std(per_model[second])
    clear = m1 - m2 > max(s1, s2)
    return (text + f", ahead of {second} ({fmt(per_model[second], percent=True)}) by "
            f"{pp(m1 - m2)}, {'more' if clear else 'not more'} than the seeds' std.")


def trend_finding(per_model: Mapping[str, PerX], baseline: str, what: str, paper: str,
                  worse_with_x: bool) -> str:
    """How accuracy changes from the first to the last setting of ``what``, per model, and
    whether the recurrent models change more than ``baseline`` in the direction the papers
    report (``worse_with_x``: accuracy should fall)."""
    d = {m: change(v) for m, v in per_model.items()}
    sign = -1 if worse_with_x else 1
    moving = [m for m in d if sign * d[m] > 0]
    text = (f"From the smallest to the largest {what}, accuracy changes by "
            + ", ".join(f"{m} {'+' if d[m] >= 0 else '−'}{pp(abs(d[m]))}" for m in d)
            + f"; it {'falls' if worse_with_x else 'rises'} for {len(moving)} of {len(d)} models.")
    recurrent = [sign * d[m] for m in d if m != baseline]
    if baseline in d and recurrent:
        agree = sum(recurrent) / len(recurrent) > sign * d[baseline]
        text += (f" The papers report {paper}; here the recurrent models' accuracy is "
                 f"{'more' if agree else 'not more'} affected than {baseline}'s"
                 + ("." if agree else ", which does not agree (likely because at this budget "
                    "the differences are within what training noise moves)."))
    return text


def table(per_model: Mapping[str, PerX], header: str, cell=None, extra=None) -> Table:
    """Rows model, columns the settings; ``cell(model, x, values)`` formats a cell."""
    cell = cell or (lambda m, x, v: fmt(v, percent=True))
    xs = list(next(iter(per_model.values())))
    columns = ["model"] + [f"{header} {x:g}" for x in xs] + ([extra[0]] if extra else [])
    rows = [[m] + [cell(m, x, v[x]) for x in xs] + ([extra[1](m)] if extra else [])
            for m, v in per_model.items()]
    return Table(columns=columns, rows=rows)


def series(per_model: Mapping[str, PerX]) -> dict[str, tuple[list, list[list[float]]]]:
    """``plot_lines`` series: per model the settings and ``per_seed[s][i]``."""
    out = {}
    for m, v in per_model.items():
        xs = list(v)
        out[m] = (xs, [list(col) for col in zip(*(v[x] for x in xs))])
    return out


# -- the experiment ----------------------------------------------------------------------
def _train(ws: Workspace, s: dict, model: str, seed: int, *, lr: float, pairs: int,
           dim: int | None = None) -> dict[str, float]:
    """Final accuracy and parameter count of one training (``dim``: the spec's own if None)."""
    over = {**s["train"], "train.lr": lr}
    if dim is not None and dim != spec_dim(s["models"][model]):
        over["model.dim"] = dim
    run = ws.train(model.lower(), s["models"][model], seed=seed, overrides=over, data="mqar",
                   data_options={"num_pairs": pairs, "vocab_size": s["vocab"]}, keep_model=False)
    rows = [r for r in run.history if "eval/accuracy" in r]
    if not rows:
        raise ExperimentError(f"{run.path}: no eval/accuracy in metrics.jsonl")
    return {"accuracy": rows[-1]["eval/accuracy"], "parameters": run.parameters}


def _sweep(ws, s, model, values, make) -> tuple[dict, dict]:
    """Accuracy per seed and parameters at each value; ``make(v)`` the ``_train`` keywords."""
    acc, params = {}, {}
    for v in values:
        runs = [_train(ws, s, model, seed, **make(v)) for seed in s["seeds"]]
        acc[v], params[v] = [r["accuracy"] for r in runs], runs[0]["parameters"]
    return acc, params


def run(ws: Workspace, cfg: Config) -> Section:
    s = _settings(cfg)
    cfg.check_all_read()
    models, lp = list(s["models"]), s["lr_pairs"]
    lr_acc, pairs_acc, width_acc, width_params, params = {}, {}, {}, {}, {}
    for m in models:
        lr_acc[m], p = _sweep(ws, s, m, s["lrs"], lambda lr: {"lr": lr, "pairs": lp})
        params[m] = p[s["lrs"][0]]
        lr = best_setting(lr_acc[m])
        pairs_acc[m], _ = _sweep(ws, s, m, s["pairs"], lambda n, lr=lr: {"lr": lr, "pairs": n})
        width_acc[m], width_params[m] = _sweep(ws, s, m, s["dims"],
                                               lambda d, lr=lr: {"lr": lr, "pairs": lp,
                                                                   "dim": d})
    best = {m: best_setting(lr_acc[m]) for m in models}
    return Section(
        name=NAME, title=TITLE, question=QUESTION, setup=_setup(s, params),
        findings=_findings(s, lr_acc, pairs_acc, width_acc, best),
        tables=_tables(s, lr_acc, pairs_acc, width_acc, width_params, best),
        figures=_figures(ws, s, lr_acc, pairs_acc, width_acc),
        raw={"accuracy_vs_lr": _raw(lr_acc), "best_lr": best,
             "accuracy_vs_pairs": _raw(pairs_acc), "accuracy_vs_dim": _raw(width_acc),
             "parameters_vs_dim": _raw(width_params), "parameters": params,
             "chance": chance(s["vocab"])})


QUESTION = """\
Multi-query associative recall (MQAR, from Zoology) lists key–value pairs and later asks
for the value of keys seen before, so the model must store the pairs in context. Zoology
found that attention recalls well even when narrow, while recurrent models need a width
(state) that grows with the number of pairs, and that the recurrent models learn the task
only in a narrow window of learning rates, so every model needs its own sweep; the Titans
and Nested Learning papers report their memories (Titans, HOPE) recall better than other
recurrent models. Here: accuracy against the learning rate, the number of pairs and the
width, for HOPE, Titans, DeltaNet and a Transformer."""


def _setup(s: dict, params: Mapping[str, int]) -> str:
    t, seeds = s["train"], s["seeds"]
    models = ", ".join(f"{m} ({params[m]:,} parameters, dim {spec_dim(p)})"
                       for m, p in s["models"].items())
    return (f"Models: {models}. Data: MQAR with vocabulary {s['vocab']} (chance "
            f"{100 * chance(s['vocab']):.1f}%), as many queries as pairs, sequences of "
            f"{t['train.seq_len']} tokens. Training: {t['train.steps']} AdamW steps (cosine, "
            f"{t['train.warmup_steps']} warm-up) of {t['train.batch_size']} sequences; "
            f"accuracy on {t['train.eval_batches']} validation batches after the last step; "
            f"{len(seeds)} seeds ({', '.join(map(str, seeds))}). Learning rates "
            f"{', '.join(f'{x:g}' for x in s['lrs'])} at {s['lr_pairs']} pairs; then at each "
            f"model's best learning rate (highest mean accuracy over the seeds in that sweep) "
            f"pairs {', '.join(map(str, s['pairs']))} and widths (model.dim) "
            f"{', '.join(map(str, s['dims']))} at {s['lr_pairs']} pairs.")


def _findings(s, lr_acc, pairs_acc, width_acc, best) -> list[str]:
    b = s["baseline"]
    return [*lr_findings(lr_acc, b, chance(s["vocab"])),
            ranking_finding({m: lr_acc[m][best[m]] for m in lr_acc},
                            f"At {s['lr_pairs']} pairs and each model's best learning rate"),
            trend_finding(pairs_acc, b, "number of pairs",
                          "recall falling with the number of pairs, faster for fixed-size "
                          "recurrent states than for attention", worse_with_x=True),
            trend_finding(width_acc, b, "width", "recurrent models needing width to recall "
                          "while attention recalls when narrow", worse_with_x=False)]


def _tables(s, lr_acc, pairs_acc, width_acc, width_params, best) -> list[Table]:
    t1 = table(lr_acc, "lr", extra=("best lr", lambda m: f"{best[m]:g}"))
    t1.caption = f"Accuracy at {s['lr_pairs']} pairs for each learning rate."
    t2 = table(pairs_acc, "pairs", extra=("lr", lambda m: f"{best[m]:g}"))
    t2.caption = "Accuracy against the number of key–value pairs (each model's best lr)."
    t3 = table(width_acc, "dim", cell=lambda m, d, v: (f"{fmt(v, percent=True)} "
                                                       f"({width_params[m][d]:,} params)"))
    t3.caption = f"Accuracy against the width at {s['lr_pairs']} pairs (each model's best lr)."
    return [t1, t2, t3]


def _figures(ws, s, lr_acc, pairs_acc, width_acc) -> list[Figure]:
    c = chance(s["vocab"])
    plots = [("accuracy_vs_lr.png", lr_acc, "learning rate", True,
              f"MQAR accuracy against the learning rate ({s['lr_pairs']} pairs)"),
             ("accuracy_vs_pairs.png", pairs_acc, "key–value pairs", False,
              "MQAR accuracy against the number of pairs (best lr)"),
             ("accuracy_vs_width.png", width_acc, "model.dim", False,
              f"MQAR accuracy against the width ({s['lr_pairs']} pairs, best lr)")]
    out = []
    for file, data, xlabel, logx, title in plots:
        plot_lines(ws.figure_path(NAME, file), series(data), xlabel=xlabel, ylabel="accuracy",
                   title=title, logx=logx, hline=c)
        out.append(Figure(file=f"{NAME}/{file}", caption=f"{title}; mean ± std over "
                          f"{len(s['seeds'])} seeds, dotted: chance."))
    return out


def _raw(per_model: Mapping[str, Mapping[Any, Any]]) -> dict:
    return {m: {f"{x:g}": v for x, v in d.items()} for m, d in per_model.items()}
