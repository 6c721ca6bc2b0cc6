"""Line plots of mean ± standard deviation over seeds (matplotlib, written as PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from .base import ExperimentError, mean_std

__all__ = ["plot_lines", "plot_bars"]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ExperimentError("plots need matplotlib: pip install 'nlframe[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_lines(path: Path, series: Mapping[str, tuple[Sequence[float], Sequence[Sequence[float]]]],
               *, xlabel: str, ylabel: str, title: str, logx: bool = False, logy: bool = False,
               hline: float | None = None, vline: float | None = None) -> Path:
    """One line per label: ``series[label] = (x, per_seed)`` with ``per_seed[s][i]`` the
    value of seed ``s`` at ``x[i]``; the line is the mean over seeds, the band ± one std."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for label, (x, per_seed) in series.items():
        stats = [mean_std([run[i] for run in per_seed]) for i in range(len(x))]
        m = [s[0] for s in stats]
        sd = [s[1] for s in stats]
        (line,) = ax.plot(x, m, marker="o", markersize=3, label=label)
        if len(per_seed) > 1:
            ax.fill_between(x, [a - b for a, b in zip(m, sd)], [a + b for a, b in zip(m, sd)],
                            color=line.get_color(), alpha=0.2, linewidth=0)
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle=":", linewidth=1)
    if vline is not None:
        ax.axvline(vline, color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log" if logx else "linear")
    ax.set_yscale("log" if logy else "linear")
    ax.set_xlabel(xlabel)
    return _finish(plt, fig, ax, path, ylabel=ylabel, title=title, grid_axis="both")


def plot_bars(path: Path, groups: Sequence[str], bars: Mapping[str, Sequence[Sequence[float]]],
              *, ylabel: str, title: str) -> Path:
    """Grouped bars: ``bars[label][g]`` is the per-seed values of ``label`` in group ``g``;
    bar height the mean, error bar ± one std."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    n = max(1, len(bars))
    width = 0.8 / n
    for j, (label, per_group) in enumerate(bars.items()):
        stats = [mean_std(v) for v in per_group]
        xs = [g + (j - (n - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [s[0] for s in stats], width, yerr=[s[1] for s in stats], capsize=2,
               label=label)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    return _finish(plt, fig, ax, path, ylabel=ylabel, title=title, grid_axis="y")


def _finish(plt, fig, ax, path: Path, *, ylabel: str, title: str, grid_axis: str) -> Path:
    """Label, grid and legend ``ax``; write ``fig`` to ``path`` and close it."""
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis=grid_axis, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
