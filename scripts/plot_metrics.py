"""Plot a run's ``metrics.jsonl``: training loss and validation bits/byte against step.

    python scripts/plot_metrics.py RUN_DIR [RUN_DIR...] --output loss.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        raise SystemExit(f"{path} does not exist: is {run} a run directory?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--output", type=Path, default=Path("loss.png"))
    args = parser.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is required: pip install 'nlframe[plot]'", file=sys.stderr)
        return 1
    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(10, 3.6))
    for run in args.runs:
        rows = read_metrics(run)
        train = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
        evals = [(r["step"], r["eval/bpb"]) for r in rows if "eval/bpb" in r]
        if train:
            ax_loss.plot(*zip(*train), label=run.name)
        if evals:
            ax_eval.plot(*zip(*evals), marker="o", label=run.name)
    ax_loss.set(xlabel="step", ylabel="train loss (nats/byte)", title="training loss")
    ax_eval.set(xlabel="step", ylabel="bits per byte", title="validation bits/byte")
    for ax in (ax_loss, ax_eval):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
