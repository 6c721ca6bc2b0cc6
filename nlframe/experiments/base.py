"""What every experiment shares: its TOML configuration, a workspace that trains and
caches, statistics over seeds, and the parts of a results section.

An experiment reads ``specs/experiments/<name>.toml`` (the ``[quick]`` table is
merged over it for ``--quick``), trains models through :class:`Workspace`, and
returns a :class:`Section`: tables and figures whose every number is the mean ±
standard deviation over the configured seeds, with the per-seed values kept in
``results.json``.

Work is cached by content: a training run lives in ``WORK/runs/<model>-<hash>``
(the hash of its spec text, overrides, training settings and seed), a measured
unit in ``WORK/units/<kind>-<hash>.json``. A rerun reuses what is done, resumes
a run that stopped mid-way from its checkpoint, and never overwrites the result
of another configuration.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import attrs

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["ExperimentError", "Config", "Workspace", "Section", "Table", "Figure", "mean_std",
           "fmt", "config_dir", "toml_value", "override_args", "spec_files"]


class ExperimentError(ValueError):
    """A configuration or request an experiment cannot run (message names file and key)."""


def config_dir() -> Path:
    """``specs/experiments`` of the source tree (``NLFRAME_EXPERIMENTS_DIR`` overrides it)."""
    env = os.environ.get("NLFRAME_EXPERIMENTS_DIR")
    if env:
        return Path(env)
    for parent in Path(__file__).resolve().parents:
        if (parent / "specs" / "experiments").is_dir():
            return parent / "specs" / "experiments"
    raise ExperimentError("cannot find specs/experiments next to the nlframe sources; pass "
                          "--config-dir or set NLFRAME_EXPERIMENTS_DIR")


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class Config:
    """An experiment's settings: ``cfg["train.steps"]`` reads a dotted key path.

    Every key must be read by the experiment (:meth:`check_all_read` lists the
    ones that were not, so a misspelt key is an error, not silently ignored).
    """

    def __init__(self, data: dict, source: str, directory: Path):
        self.data, self.source, self.directory = data, source, directory
        self._read: set[str] = set()

    @classmethod
    def load(cls, name: str, *, quick: bool = False, directory: Path | None = None) -> "Config":
        directory = Path(directory) if directory else config_dir()
        path = directory / f"{name}.toml"
        if not path.is_file():
            raise ExperimentError(f"experiment {name!r}: no configuration {path.name} in {directory}")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ExperimentError(f"{path.name}: not valid TOML ({exc})") from None
        q = data.pop("quick", {})
        if not isinstance(q, dict):
            raise ExperimentError(f"{path.name}: quick: expected a table")
        return cls(_merge(data, q) if quick else data, path.name, directory)

    def __getitem__(self, key: str) -> Any:
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ExperimentError(f"{self.source}: missing key {key!r}")
            node = node[part]
        self._mark(key, node)
        return node

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except ExperimentError:
            return default

    def _mark(self, key: str, node: Any) -> None:
        self._read.add(key)
        if isinstance(node, dict):  # a table read whole counts for all its keys
            for k, v in node.items():
                self._mark(f"{key}.{k}", v)

    def typed(self, key: str, kind: type | tuple[type, ...], *, min: float | None = None) -> Any:
        """``self[key]`` checked to be of ``kind`` (and ``>= min``)."""
        value = self[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            raise ExperimentError(f"{self.source}: {key}: expected {names}, got {value!r}")
        if min is not None and value < min:
            raise ExperimentError(f"{self.source}: {key}: expected >= {min}, got {value!r}")
        return value

    def check_all_read(self) -> None:
        unread = sorted(k for k in _leaf_keys(self.data) if k not in self._read)
        if unread:
            raise ExperimentError(f"{self.source}: unknown key(s) {', '.join(unread)}")

    @property
    def seeds(self) -> list[int]:
        """Seeds ``0 … seeds−1``."""
        return list(range(self.typed("seeds", int, min=1)))


def _leaf_keys(d: dict, prefix: str = "") -> Iterable[str]:
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            yield from _leaf_keys(v, key + ".")
        else:
            yield key


def spec_files(cfg: Config, key: str = "models") -> dict[str, Path]:
    """The table ``key`` of label = spec file (relative to the configuration directory),
    as label → path; every file must exist."""
    table = cfg[key]
    if not isinstance(table, dict) or not table:
        raise ExperimentError(f"{cfg.source}: {key}: expected a table of label = spec file")
    out = {}
    for label, rel in table.items():
        path = cfg.directory / str(rel)
        if not path.is_file():
            raise ExperimentError(f"{cfg.source}: {key}.{label}: no spec file {path}")
        out[label] = path
    return out


def override_args(overrides: dict[str, Any]) -> list[str]:
    """``KEY.PATH=VALUE`` spec overrides (values as TOML literals), in key order."""
    return [f"{k}={toml_value(v)}" for k, v in sorted(overrides.items())]


def toml_value(value: Any) -> str:
    """``value`` as a TOML literal, for a ``KEY.PATH=VALUE`` spec override."""
    import tomli_w

    return tomli_w.dumps({"x": value}).split("=", 1)[1].strip()


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


@attrs.define
class TrainedRun:
    """A finished training run: its directory, the model (eval mode) and its eval history
    (the rows of ``metrics.jsonl`` with ``eval/<metric>`` entries, each with its ``step``)."""

    path: Path
    model: Any
    history: list[dict[str, float]]
    parameters: int
    seconds: float


class Workspace:
    """Where an experiment run trains, caches and writes its artifacts.

    ``out`` receives the page's images and ``results.json`` files; ``work``
    (default ``out/.work``, skipped by MkDocs and git) the training runs and
    the cached units.
    """

    def __init__(self, out: str | Path, *, work: str | Path | None = None, quick: bool = False,
                 device: str = "cpu", progress: bool = True,
                 echo: Callable[[str], None] = print):
        self.out = Path(out)
        self.work = Path(work) if work else self.out / ".work"
        self.quick, self.device, self.progress, self.echo = quick, device, progress, echo
        self.computed = 0
        """Trainings and units computed (not taken from the cache) so far."""
        self.work.mkdir(parents=True, exist_ok=True)
        ignore = self.work / ".gitignore"
        if not ignore.exists():
            ignore.write_text("# nlframe experiments: training runs and cached units\n*\n")

    # -- cached units ----------------------------------------------------------
    def unit(self, kind: str, key: dict[str, Any], compute: Callable[[], dict[str, Any]]) -> dict:
        """``compute()`` once per distinct ``key`` (a JSON object), cached in ``work/units``."""
        path = self.work / "units" / f"{kind}-{_digest([kind, key, self.quick])}.json"
        if path.is_file():
            try:
                return json.loads(path.read_text())["result"]
            except (ValueError, KeyError):
                pass  # a torn write: compute again
        result = compute()
        self.computed += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"kind": kind, "key": key, "result": result}, indent=1))
        tmp.replace(path)
        return result

    # -- training --------------------------------------------------------------
    def run_path(self, label: str, key: Any) -> Path:
        """The run directory of a training keyed by ``key`` (a JSON value)."""
        return self.work / "runs" / f"{label}-{_digest(key)}"

    def train(self, label: str, spec: str | Path, *, seed: int, overrides: dict[str, Any] | None = None,
              data: str | None = None, data_options: dict[str, Any] | None = None,
              keep_model: bool = True) -> TrainedRun:
        """Train ``spec`` with ``overrides`` (dotted spec keys → values) at ``seed``, or
        reuse / resume the run of the same configuration. Without ``keep_model`` the
        trained model is not loaded (``model`` is ``None``)."""
        from ..checkpoint import META_FILE, find_checkpoint
        from ..train import Trainer, load_run

        spec = Path(spec)
        overrides = dict(overrides or {})
        key = {"spec": spec.read_text(), "overrides": overrides, "seed": seed, "data": data,
               "data_options": data_options or {}, "device": self.device}
        path = self.run_path(label, key)
        args = override_args(overrides)
        finished = (path / "done.json").is_file() and (path / "checkpoint").exists()
        t0 = time.perf_counter()
        if not finished:
            resume = (path / "checkpoint").exists()  # a run that stopped mid-way continues
            self.echo(f"  train {label} (seed {seed}){', resuming' if resume else ''}")
            self.computed += 1
            trainer = Trainer(spec, path, seed=seed, overrides=args, data=data,
                              data_options=data_options, device=self.device, resume=resume,
                              overwrite=not resume and path.exists(), progress=self.progress,
                              echo=lambda m: None)
            with trainer:
                result = trainer.run()
            if result.interrupted:
                raise KeyboardInterrupt
            (path / "done.json").write_text(json.dumps(
                {"seconds": time.perf_counter() - t0, "step": trainer.step}))
        if keep_model:
            model, _, ckpt = load_run(path, device=self.device)
            model.eval()
            meta = ckpt["meta"]
        else:
            model = None
            meta = json.loads((find_checkpoint(path, trainer=False) / META_FILE).read_text())
        seconds = json.loads((path / "done.json").read_text())["seconds"]
        return TrainedRun(path=path, model=model, history=_history(path),
                          parameters=int(meta["parameters"]), seconds=float(seconds))

    def figure_path(self, experiment: str, name: str) -> Path:
        p = self.out / experiment / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


def _history(run: Path) -> list[dict[str, float]]:
    """The evaluation entries of ``run/metrics.jsonl`` (one per evaluated step)."""
    out = []
    metrics = run / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if any(k.startswith("eval/") for k in row):
                out.append(row)
    return out


# -- statistics ----------------------------------------------------------------
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof = 1``; 0 for one value) of the finite values
    (``nan`` if none)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return math.nan, math.nan
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def fmt(values: Sequence[float], digits: int = 3, percent: bool = False) -> str:
    """``"mean ± std"`` of ``values`` (as percentages with ``percent``)."""
    m, s = mean_std(values)
    if math.isnan(m):
        return "—"
    if percent:
        return f"{100 * m:.1f} ± {100 * s:.1f}%"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


# -- what a section is made of -----------------------------------------------------
@attrs.define
class Table:
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""


@attrs.define
class Figure:
    file: str
    """Path relative to the results directory (``<experiment>/<name>.png``)."""
    caption: str


@attrs.define
class Section:
    """One experiment's part of the results page."""

    name: str
    title: str
    question: str
    """What the experiment asks, and what the papers report."""
    setup: str
    """Models, sizes, data, budget (generated from the configuration)."""
    findings: list[str] = attrs.field(factory=list)
    """Sentences computed from the numbers: what agrees or disagrees with the papers."""
    tables: list[Table] = attrs.field(factory=list)
    figures: list[Figure] = attrs.field(factory=list)
    raw: dict[str, Any] = attrs.field(factory=dict)
    """Per-seed numbers, written to ``<experiment>/results.json``."""
    seconds: float = 0.0
