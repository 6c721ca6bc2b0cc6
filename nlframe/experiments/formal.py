"""Experiment 5: formal languages (parity, cycle navigation, modular arithmetic, Dyck),
trained on short strings and evaluated at the training length and longer."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from .base import (Config, ExperimentError, Figure, Section, Table, Workspace, fmt, mean_std,
                   spec_files)
from .mqar import baseline_of, number_list, pp, train_overrides
from .plots import plot_lines

NAME = "formal"
TITLE = "Formal languages: state tracking and longer strings"

LANGUAGES = ("parity", "cycle-navigation", "modular-arithmetic", "dyck")

Acc = Mapping[str, Mapping[str, Mapping[int, Sequence[float]]]]
"""``acc[language][model][length]``: per-seed accuracies."""


def _settings(cfg: Config) -> dict[str, Any]:
    models = spec_files(cfg)
    languages = cfg["languages"]
    if (not isinstance(languages, list) or not languages
            or any(lang not in LANGUAGES for lang in languages)):
        raise ExperimentError(f"{cfg.source}: languages: expected a list from "
                              f"{', '.join(LANGUAGES)}, got {languages!r}")
    lo, hi = cfg.typed("data.min_len", int, min=1), cfg.typed("data.max_len", int, min=1)
    if hi < lo:
        raise ExperimentError(f"{cfg.source}: data.max_len {hi} < data.min_len {lo}")
    train = {**train_overrides(cfg, seq_len=hi + 2),
             "train.lr": cfg.typed("train.lr", float, min=0)}
    return {"models": models, "baseline": baseline_of(cfg, models), "seeds": cfg.seeds,
            "languages": languages, "train": train, "min_len": lo, "max_len": hi,
            "dense": cfg.typed("data.dense", bool),
            "lengths": [hi * f for f in number_list(cfg, "eval.factors", int)],
            "eval_batches": cfg.typed("eval.batches", int, min=1),
            "eval_batch_size": cfg.typed("eval.batch_size", int, min=1)}


# -- pure helpers ----------------------------------------------------------------------
def majority(targets: Sequence[int]) -> float:
    """Accuracy of always answering the most common target."""
    if not targets:
        raise ExperimentError("no answer positions to count")
    return Counter(targets).most_common(1)[0][1] / len(targets)


def drop(per_length: Mapping[int, Sequence[float]]) -> float:
    """Mean accuracy at the shortest length minus at the longest."""
    xs = sorted(per_length)
    return mean_std(per_length[xs[0]])[0] - mean_std(per_length[xs[-1]])[0]


def averaged(acc: Acc, model: str, length: int) -> float:
    """Mean accuracy of ``model`` at ``length`` over the languages."""
    return sum(mean_std(acc[lang][model][length])[0] for lang in acc) / len(acc)


def learnt(per_model: Mapping[str, Mapping[int, Sequence[float]]], base: float,
           length: int, margin: float = 0.1) -> list[str]:
    """The models whose mean at ``length`` beats the majority baseline by ``margin``."""
    return [m for m, v in per_model.items() if mean_std(v[length])[0] > base + margin]


def findings(acc: Acc, base: Mapping[str, Mapping[int, float]], baseline: str) -> list[str]:
    """Sentences computed from the accuracies and the majority baselines."""
    first = next(iter(acc.values()))
    models, lengths = list(first), sorted(next(iter(first.values())))
    short, long = lengths[0], lengths[-1]
    out = []
    for lang, per_model in acc.items():
        best_s = max(models, key=lambda m: mean_std(per_model[m][short])[0])
        best_l = max(models, key=lambda m: mean_std(per_model[m][long])[0])
        ok = learnt(per_model, base[lang][short], short)
        out.append(f"{lang}: at the training length ({short}) the best is {best_s} "
                   f"({fmt(per_model[best_s][short], percent=True)}), at length {long} "
                   f"{best_l} ({fmt(per_model[best_l][long], percent=True)}); majority class "
                   f"{100 * base[lang][short]:.1f}% / {100 * base[lang][long]:.1f}%. "
                   + (f"Learnt (more than 10 pp above the majority class at the training "
                      f"length) by {', '.join(ok)}." if ok else
                      "No model is 10 pp above the majority class even at the training "
                      "length: not learnt at this budget."))
    known = [lang for lang in acc if learnt(acc[lang], base[lang][short], short)]
    if not known:
        out.append("No language was learnt at the training length, so how accuracy holds on "
                   "longer strings cannot be compared with the papers here.")
        return out
    drops = {m: sum(drop(acc[lang][m]) for lang in known) / len(known) for m in models}
    out.append(f"Over the languages learnt at the training length ({', '.join(known)}), "
               f"accuracy changes from length {short} to {long} by "
               + ", ".join(f"{m} {'−' if d > 0 else '+'}{pp(abs(d))}" for m, d in drops.items())
               + ".")
    recurrent = [d for m, d in drops.items() if m != baseline]
    if baseline in drops and recurrent:
        agree = drops[baseline] > sum(recurrent) / len(recurrent)
        out.append(f"The Nested Learning and Chomsky-hierarchy papers report that recurrent "
                   f"models which track a state keep their accuracy on longer strings while "
                   f"attention loses it; here {baseline} loses "
                   + ("more than the recurrent models on average, which agrees." if agree else
                      "no more than the recurrent models on average, which does not agree "
                      "(likely because the models did not learn the languages well enough at "
                      "the training length for length generalisation to show)."))
    top = max(models, key=lambda m: averaged(acc, m, long))
    floor = sum(base[lang][long] for lang in acc) / len(acc)
    text = (f"Averaged over the languages, the best model at length {long} is {top} "
            f"({100 * averaged(acc, top, long):.1f}%, majority class {100 * floor:.1f}%)")
    if averaged(acc, top, long) <= floor + 0.05:
        text += ": no better than the majority class, so no model generalises to that length."
    elif top == baseline:
        text += ", the attention baseline, unlike the papers' report."
    else:
        text += ", a recurrent model, as the papers report."
    out.append(text)
    return out


# -- the experiment ----------------------------------------------------------------------
def _evaluate(ws: Workspace, s: dict, run, lang: str, length: int, seed: int) -> dict:
    """Accuracy at the answer of strings of exactly ``length`` symbols, and the majority rate."""
    from ..datasets import open_data

    key = {"run": run.path.name, "language": lang, "length": length, "seed": seed,
           "batches": s["eval_batches"], "batch_size": s["eval_batch_size"]}

    def compute() -> dict:
        data = open_data(lang, min_len=length, max_len=length)
        kw = {"batch_size": s["eval_batch_size"], "seq_len": length + 2, "seed": seed}
        targets = []
        for i in range(s["eval_batches"]):
            b = data.batch("validation", i, **kw)
            targets += b["targets"][b["mask"]].tolist()
        metrics = data.evaluate(run.model, batches=s["eval_batches"], **kw)
        return {"accuracy": metrics["accuracy"], "majority": majority(targets)}

    return ws.unit("formal-accuracy", key, compute)


def run(ws: Workspace, cfg: Config) -> Section:
    s = _settings(cfg)
    cfg.check_all_read()
    acc: dict = {}
    majority_rate: dict = {}
    params: dict = {}
    options = {"min_len": s["min_len"], "max_len": s["max_len"], "dense": s["dense"]}
    for lang in s["languages"]:
        acc[lang], rates = {}, {L: [] for L in s["lengths"]}
        for m, spec in s["models"].items():
            acc[lang][m] = {L: [] for L in s["lengths"]}
            for seed in s["seeds"]:
                r = ws.train(f"{m.lower()}-{lang}", spec, seed=seed, overrides=s["train"],
                             data=lang, data_options=options)
                params[m] = r.parameters
                for L in s["lengths"]:
                    e = _evaluate(ws, s, r, lang, L, seed)
                    acc[lang][m][L].append(e["accuracy"])
                    rates[L].append(e["majority"])
        majority_rate[lang] = {L: mean_std(v)[0] for L, v in rates.items()}
    return Section(name=NAME, title=TITLE, question=QUESTION, setup=_setup(s, params),
                   findings=findings(acc, majority_rate, s["baseline"]),
                   tables=[_table(s, acc, majority_rate)], figures=_figures(ws, s, acc,
                                                                            majority_rate),
                   raw={"accuracy": {lang: {m: {str(L): v for L, v in d.items()}
                                            for m, d in pm.items()} for lang, pm in acc.items()},
                        "majority": {lang: {str(L): v for L, v in d.items()}
                                     for lang, d in majority_rate.items()},
                        "parameters": params})


QUESTION = """\
Formal languages whose answer depends on a state carried through the whole string
(parity, position on a cycle, a running value modulo m, bracket balance) separate models
that track state from those that do not. The Chomsky-hierarchy study (Delétang et al.)
found Transformers fail to generalise to strings longer than trained while recurrent
models that track state succeed, and the Nested Learning paper reports HOPE near-perfect
on such recognition tasks. Here every model is trained on short strings and its accuracy
at the final answer is measured at the training length and at longer lengths."""


def _setup(s: dict, params: Mapping[str, int]) -> str:
    t, seeds = s["train"], s["seeds"]
    models = ", ".join(f"{m} ({params[m]:,} parameters)" for m in s["models"])
    return (f"Models: {models}. Languages: {', '.join(s['languages'])} (the plugins' default "
            f"options). Training strings of {s['min_len']}–{s['max_len']} symbols "
            f"({'every prefix supervised' if s['dense'] else 'answer only'}), "
            f"{t['train.steps']} AdamW steps (lr {t['train.lr']:g}, cosine, "
            f"{t['train.warmup_steps']} warm-up) of {t['train.batch_size']} sequences of "
            f"{t['train.seq_len']} tokens; {len(seeds)} seeds ({', '.join(map(str, seeds))}). "
            f"Evaluated at the final answer of {s['eval_batches']} × {s['eval_batch_size']} "
            f"strings of exactly {', '.join(map(str, s['lengths']))} symbols; the majority "
            f"class is the accuracy of always giving the most common answer on those strings.")


def _table(s: dict, acc: Acc, base) -> Table:
    L0 = s["lengths"][0]
    columns = ["language", "model"] + [f"length {L}" + (" (trained)" if L == L0 else
                                                        f" ({L // L0}×)") for L in s["lengths"]]
    rows = []
    for lang, per_model in acc.items():
        rows += [[lang, m] + [fmt(v[L], percent=True) for L in s["lengths"]]
                 for m, v in per_model.items()]
        rows.append([lang, "majority class"] + [f"{100 * base[lang][L]:.1f}%"
                                                for L in s["lengths"]])
    return Table(columns=columns, rows=rows, caption="Accuracy at the final answer per "
                 "model, language and string length (mean ± std over seeds).")


def _figures(ws: Workspace, s: dict, acc: Acc, base) -> list[Figure]:
    out = []
    for lang, per_model in acc.items():
        series = {m: (s["lengths"], [list(c) for c in zip(*(v[L] for L in s["lengths"]))])
                  for m, v in per_model.items()}
        series["majority class"] = (s["lengths"], [[base[lang][L] for L in s["lengths"]]])
        file = f"accuracy_vs_length_{lang}.png"
        plot_lines(ws.figure_path(NAME, file), series, xlabel="string length",
                   ylabel="accuracy", title=f"{lang}: accuracy against length "
                   f"(trained on {s['min_len']}–{s['max_len']})", logx=True)
        out.append(Figure(file=f"{NAME}/{file}", caption=f"{lang}: accuracy at the final "
                          f"answer against the string length; mean ± std over "
                          f"{len(s['seeds'])} seeds."))
    return out
