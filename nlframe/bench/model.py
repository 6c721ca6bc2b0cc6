"""Forward and training tokens/s and peak memory of any spec over a list of lengths.

For every ``(spec, seq_len)`` a fresh worker process (``python -m
nlframe.bench.model --worker ...``) builds the model (seed 0) and times, on
random tokens of shape ``(batch_size, seq_len)``:

* forward: ``model(tokens)`` under ``torch.no_grad()`` in eval mode;
* train: forward + next-token cross-entropy (:func:`nlframe.train.lm_loss`) +
  backward + a ``torch.optim.AdamW`` step at the spec's ``train.lr`` (the same
  outer optimizer for every spec, so specs compare at equal optimizer cost).

One warm-up step each, then the median of ``--steps`` timed steps.

Backends (``--backends``, default ``all`` = every registered backend available
here; ``auto`` = the registry's choice per level): a row per spec, length and
backend, measured one after another (``reference`` only for ``T ≤
--reference-max-T``). A named backend is
*preferred* in its worker — it runs every level it supports, and the others run on
``auto``'s choice — and the row's ``levels`` column counts the scan calls of one
forward pass per backend that ran them (e.g. ``compiled 4, chunked 2``), so a row
never claims a backend that did not run. A spec without scan levels (a
transformer) gets one row per length, of no backend (``backend`` null): none applies to it.

Ratios: ``*_vs_reference`` and ``*_vs_chunked`` divide a row's tokens/s by those of
the ``reference`` / ``chunked`` row of the same spec and length (``None`` where that
row is absent or failed). FLOPs (``--flops``, default on): the worker counts one
forward and one training step with ``torch.utils.flop_counter`` after timing them,
when every level ran on ``reference`` or ``chunked`` (eager torch, countable); a
``compiled`` row is given its eager twin ``chunked``'s count for the same spec and
length (the graph it compiles), and ``flops_from`` says which. Achieved GFLOP/s is
that count over the measured step time, and ``*_pct_of_peak`` compares it with the
best GFLOP/s of square float32 matmuls (N = 512, 1024, 2048) timed on the same
device, with the workers' thread count, at the start of the same run. Memory: on
CPU the worker's peak RSS (a process per row, so peaks never mix between
lengths; ``VmHWM`` on Linux, where ``getrusage(RUSAGE_SELF).ru_maxrss`` of an
exec'd child would start at its parent's peak, ``ru_maxrss`` elsewhere) and its
increase over the peak just after building the model; on CUDA
``torch.cuda.max_memory_allocated``. A length that runs out of
memory or raises is reported as ``OOM`` / ``error: ...`` in its row; a worker
killed by the OS as ``killed (out of memory?)``; the other rows still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .scan import _ratio, counted_flops, load_average, matmul_peak_gflops, memory_bandwidth_gb_s

try:
    import resource
except ImportError:  # pragma: no cover - not on Windows
    resource = None  # type: ignore[assignment]

DEFAULT_SPECS = ("transformer-tiny", "titans-tiny", "hope-tiny")
_RESULT = "NLFRAME_BENCH_RESULT "
FIELDS = ("spec", "backend", "params", "batch_size", "seq_len", "forward_tok_s", "train_tok_s",
          "forward_vs_reference", "forward_vs_chunked", "train_vs_reference", "train_vs_chunked",
          "forward_gflop", "train_gflop", "forward_gflop_s", "train_gflop_s", "flops_from",
          "peak_gflop_s", "forward_pct_of_peak", "train_pct_of_peak",
          "peak_rss_mb", "peak_rss_delta_mb", "levels", "status")
COUNTABLE = frozenset({"reference", "chunked"})  # eager torch: every FLOP goes through dispatch


# -- helpers shared by parent and worker ----------------------------------------
def ru_maxrss_mb() -> float:
    """``getrusage(RUSAGE_SELF).ru_maxrss`` in MiB (bytes on macOS, KiB elsewhere)."""
    if resource is None:  # pragma: no cover
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB.

    On Linux ``ru_maxrss`` of a freshly exec'd process starts at its parent's peak
    (the kernel folds the pre-exec address space's high-water mark into it), so a
    worker started from a big parent would report the parent's peak. ``VmHWM`` of
    ``/proc/self/status`` is the high-water mark of this process's own address
    space; use it where it exists and ``ru_maxrss`` elsewhere.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10  # kB
    except (OSError, ValueError, IndexError):
        pass
    return ru_maxrss_mb()


def one_line(text: str, limit: int = 200) -> str:
    """The first non-empty line of ``text``, shortened to ``limit`` characters."""
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (CUDA OOM, CPU allocator, ``MemoryError``)."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "can't allocate memory"
                                              in msg or "cannot allocate memory" in msg)


def status_of_exception(exc: BaseException) -> str:
    if is_oom(exc):
        return "OOM"
    return f"error: {type(exc).__name__}: {one_line(exc) or '(no message)'}"


def status_of_returncode(rc: int, stderr: str) -> str:
    """The row status of a worker that exited with ``rc`` without reporting a result."""
    kill = getattr(signal, "SIGKILL", 9)
    if rc in (-kill, 128 + kill):
        return "killed (out of memory?)"
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = str(-rc)
        return f"killed by signal {name}"
    last = [s.strip() for s in stderr.splitlines() if s.strip()]
    return f"error: {last[-1][:200] if last else f'worker exited with status {rc}'}"


def resolve_spec(name: str) -> str:
    """A spec argument as an absolute path: a file, or a bare name of ``specs/NAME.toml``."""
    p = Path(name)
    if p.exists():
        return str(p.resolve())
    if p.suffix != ".toml" and len(p.parts) == 1:
        try:
            from .train import _specs_dir

            cand = _specs_dir() / f"{name}.toml"
        except FileNotFoundError:
            cand = None
        if cand is not None and cand.exists():
            return str(cand)
    return str(p)  # load_spec names the missing file


def spec_label(path: str) -> str:
    return Path(path).stem


# -- the worker -------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_median(step: Callable[[], object], steps: int, device: torch.device) -> float:
    """Median seconds of ``steps`` calls of ``step`` after one warm-up call."""
    step()
    _sync(device)
    times = []
    for _ in range(max(1, steps)):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def prefer_backend(name: str) -> dict[str, int]:
    """Make ``name`` the first choice of ``backend="auto"`` in this process (the worker's),
    and count which backend runs each scan call: the returned dict fills as scans run."""
    from .. import scan as scan_module

    used: dict[str, int] = {}
    if name != "auto":
        cls = scan_module.get_registry().get("backend", name)
        cls.priority = max(e.obj.priority for e in scan_module.get_registry().entries("backend")) + 1
    resolve = scan_module.resolve_backend

    def counting(bname: str, request):
        chosen, impl = resolve(bname, request)
        used[chosen] = used.get(chosen, 0) + 1
        return chosen, impl

    scan_module.resolve_backend = counting
    return used


def measure(spec_source: Any, *, seq_len: int, batch_size: int, steps: int, mode: str,
            device: str = "cpu", threads: int | None = None, label: str | None = None,
            memory_limit_mb: float | None = None, backend: str = "auto",
            flops: bool = True) -> dict:
    """One record, measured in this process (the worker's body; call it in a fresh process
    for a meaningful peak RSS). Never raises for failures of the model: they go to ``status``."""
    from ..build import build
    from ..spec import load_spec
    from . import lm_train_step

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    used = prefer_backend(backend)
    rec: dict[str, Any] = dict(spec=label or str(spec_source), backend=backend, levels=None,
                               params=None, batch_size=batch_size,
                               seq_len=seq_len, forward_tok_s=None, train_tok_s=None,
                               peak_rss_mb=None, peak_rss_delta_mb=None, status="ok",
                               device=str(dev), threads=torch.get_num_threads(), mode=mode,
                               build_rss_mb=None, forward_peak_rss_mb=None, peak_cuda_mb=None,
                               failed_phase=None, ru_maxrss_mb=None, forward_gflop=None,
                               train_gflop=None, forward_gflop_s=None, train_gflop_s=None,
                               flops_from=None)
    phase = "build"
    try:
        spec = load_spec(spec_source)
        model = build(spec, seed=0, device=dev)
        rec["params"] = sum(p.numel() for p in model.parameters())
        vocab = spec.model.config.vocab_size
        gen = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, vocab, (batch_size, seq_len + 1), generator=gen).to(dev)
        batch = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:]}
        rec["build_rss_mb"] = peak_rss_mb()
        if memory_limit_mb is not None:
            _limit_address_space(memory_limit_mb)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        n = batch_size * seq_len
        if mode in ("forward", "both"):
            phase = "forward"
            model.eval()

            def fwd():
                with torch.no_grad():
                    model(batch["tokens"])

            fwd()  # one pass counts the levels' backends
            rec["levels"] = dict(used)
            seconds = timed_median(fwd, steps, dev)
            rec["forward_tok_s"] = n / seconds
            rec["forward_peak_rss_mb"] = peak_rss_mb()
            count_flops(rec, "forward", fwd, seconds, flops)
        if mode in ("train", "both"):
            phase = "train"
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=spec.train.lr)

            def train_step():
                lm_train_step(model, batch, [opt])

            if rec["levels"] is None:
                used.clear()
                with torch.no_grad():
                    model(batch["tokens"])
                rec["levels"] = dict(used)

            seconds = timed_median(train_step, steps, dev)
            rec["train_tok_s"] = n / seconds
            count_flops(rec, "train", train_step, seconds, flops)
    except BaseException as exc:  # every failure becomes the row's status
        if isinstance(exc, KeyboardInterrupt):
            raise
        rec["status"] = status_of_exception(exc)
        rec["failed_phase"] = phase
    finally:
        rec["peak_rss_mb"] = peak_rss_mb()
        rec["ru_maxrss_mb"] = ru_maxrss_mb()
        if rec["build_rss_mb"] is not None:
            rec["peak_rss_delta_mb"] = rec["peak_rss_mb"] - rec["build_rss_mb"]
        if dev.type == "cuda" and torch.cuda.is_available():
            rec["peak_cuda_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return rec


def count_flops(rec: dict, phase: str, step: Callable[[], object], seconds: float,
                enabled: bool) -> None:
    """Fill ``rec[phase + "_gflop"]`` / ``_gflop_s`` from one counted, untimed call of
    ``step`` — only where every level ran on an eager backend (``COUNTABLE``): FLOPs inside
    a compiled graph or a fused kernel are invisible to the counter, and a partial count
    would read as a low FLOP rate. ``flops_from`` says why a row has no count."""
    if not enabled:
        rec["flops_from"] = "not counted (--no-flops)"
        return
    ran = set(rec.get("levels") or {})
    if not ran <= COUNTABLE:
        rec["flops_from"] = (f"not counted here: {', '.join(sorted(ran - COUNTABLE))} runs "
                             "outside torch's dispatcher")
        return
    try:
        total = counted_flops(step)
    except Exception as exc:  # noqa: BLE001 - a count that fails leaves the timings standing
        rec["flops_from"] = f"count failed: {type(exc).__name__}: {one_line(exc)}"
        return
    rec[phase + "_gflop"] = total / 1e9
    rec[phase + "_gflop_s"] = total / seconds / 1e9
    rec["flops_from"] = "counted"


def _limit_address_space(extra_mb: float) -> None:
    """Cap this process's address space at its current size + ``extra_mb`` (Linux), so that
    allocations beyond it fail with an allocator error (reported as OOM) instead of the
    machine swapping or the OOM killer stepping in."""
    try:
        with open("/proc/self/statm") as fh:
            vm = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, AttributeError, ValueError):
        return
    if resource is None:  # pragma: no cover
        return
    cap = vm + int(extra_mb * 2**20)
    resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))


def _worker(job_json: str) -> int:
    from nlframe.runtime import fix_mmap_threshold

    fix_mmap_threshold()  # as the command line does for train / eval
    job = json.loads(job_json)
    rec = measure(job.pop("spec"), **job)
    sys.stdout.write(_RESULT + json.dumps(rec) + "\n")
    sys.stdout.flush()
    return 0


# -- the parent ---------------------------------------------------------------------
def run_worker(job: dict, timeout: float | None) -> dict:
    """``measure(**job)`` in a fresh ``python -m nlframe.bench.model --worker`` process."""
    cmd = [sys.executable, "-m", "nlframe.bench.model", "--worker", json.dumps(job)]
    base: dict[str, Any] = dict.fromkeys(FIELDS)
    base.update(spec=job.get("label") or job["spec"], backend=job.get("backend", "auto"),
                batch_size=job.get("batch_size"), seq_len=job.get("seq_len"))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {**base, "status": f"timeout after {timeout:g} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_RESULT):
            return json.loads(line[len(_RESULT):])
    return {**base, "status": status_of_returncode(proc.returncode, proc.stderr)}


def resolve_backends(names: list[str]) -> list[str]:
    """``--backends`` as backend names: ``auto``, registered names, or ``all`` (every
    registered backend available here, highest priority first)."""
    from ..registry import get_registry

    reg = get_registry()
    known = reg.names("backend")
    out: list[str] = []
    for name in names:
        if name == "all":
            ranked = sorted(known, key=lambda n: -reg.get("backend", n).priority)
            out += [n for n in ranked if reg.get("backend", n)().unavailable_reason() is None]
        elif name == "auto" or name in known:
            out.append(name)
        else:
            raise ValueError(f"unknown backend {name!r}; registered: {', '.join(known)} "
                             "(or auto, all)")
    return list(dict.fromkeys(out))


def _fmt(x: Any, spec: str = ",.0f") -> str:
    return "—" if x is None else format(x, spec)


def shown_status(r: dict) -> str:
    """``status``, naming the phase that failed when an earlier one was measured."""
    st, phase = r["status"], r.get("failed_phase")
    return f"{st} (in {phase})" if st != "ok" and phase in ("train",) else st


def add_ratios(records: list[dict], peak_gflop_s: float | None,
               bandwidth_gb_s: float | None = None) -> None:
    """Each record's tokens/s over the ``reference`` / ``chunked`` row of its spec and
    length, and its GFLOP/s over the matmul peak (``None`` where either side is missing);
    a ``compiled`` row without a count gets its ``chunked`` twin's. Every record also
    carries the run's two ceilings, ``peak_gflop_s`` and ``bandwidth_gb_s``."""
    ok = {(r["spec"], r["seq_len"], r.get("backend")): r for r in records if r["status"] == "ok"}
    for r in records:
        twin = ok.get((r["spec"], r["seq_len"], "chunked"))
        borrow = (r.get("backend") == "compiled" and r.get("train_gflop") is None
                  and r.get("forward_gflop") is None and twin is not None
                  and twin.get("flops_from") == "counted")
        r["peak_gflop_s"], r["bandwidth_gb_s"] = peak_gflop_s, bandwidth_gb_s
        for phase in ("forward", "train"):
            tok_s = r.get(f"{phase}_tok_s")
            for base in ("reference", "chunked"):
                other = ok.get((r["spec"], r["seq_len"], base))
                b_tok_s = None if other is None else other.get(f"{phase}_tok_s")
                r[f"{phase}_vs_{base}"] = (tok_s / b_tok_s if tok_s and b_tok_s else None)
            if borrow and tok_s and twin.get(f"{phase}_gflop") is not None:
                gflop = twin[f"{phase}_gflop"]
                r[f"{phase}_gflop"] = gflop
                r[f"{phase}_gflop_s"] = gflop * tok_s / (r["batch_size"] * r["seq_len"])
                r["flops_from"] = "chunked (the eager graph compiled builds)"
            rate = r.get(f"{phase}_gflop_s")
            r[f"{phase}_pct_of_peak"] = (100 * rate / peak_gflop_s if rate is not None
                                         and peak_gflop_s else None)


def _pair(r: dict, key: str, fmt: Callable[[Any], str]) -> str:
    """``forward / train`` of ``key`` (``forward_<key>``, ``train_<key>``)."""
    return f"{fmt(r.get('forward_' + key))} / {fmt(r.get('train_' + key))}"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}%"


def format_table(records: list[dict], device: str) -> str:
    cuda = device.startswith("cuda")
    mem = "peak CUDA MB" if cuda else "peak RSS MB"
    lines = [(f"| spec | backend | params | B | T | forward tok/s | train tok/s | "
              "× reference (fwd / train) | × chunked (fwd / train) | GFLOP per step (fwd / train) "
              f"| GFLOP/s (fwd / train) | % of matmul peak (fwd / train) | {mem} | "
              "Δ RSS over built model MB | levels | status |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in records:
        peak = r.get("peak_cuda_mb") if cuda else r.get("peak_rss_mb")
        at_least = "" if r["status"] == "ok" or peak is None else "≥"  # stopped early
        levels = ", ".join(f"{b} {n}" for b, n in (r.get("levels") or {}).items()) or "—"
        lines.append(f"| {r['spec']} | {r.get('backend') or '—'} | {_fmt(r.get('params'))} | "
                     f"{r['batch_size']} | "
                     f"{r['seq_len']} | {_fmt(r.get('forward_tok_s'))} | "
                     f"{_fmt(r.get('train_tok_s'))} | {_pair(r, 'vs_reference', _ratio)} | "
                     f"{_pair(r, 'vs_chunked', _ratio)} | "
                     f"{_pair(r, 'gflop', lambda x: _fmt(x, '.3g'))} | "
                     f"{_pair(r, 'gflop_s', lambda x: _fmt(x, ',.1f'))} | "
                     f"{_pair(r, 'pct_of_peak', _pct)} | {at_least}{_fmt(peak, ',.1f')} | "
                     f"{_fmt(r.get('peak_rss_delta_mb'), ',.1f')} | {levels} | {shown_status(r)} |")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="nlframe bench model", description=__doc__.splitlines()[0],
                                 epilog="Each (spec, length) runs in its own process; the rows "
                                        "of a table are measured one after another.")
    ap.add_argument("specs", nargs="*", metavar="SPEC",
                    help="spec files or names of specs/NAME.toml "
                         f"(default: {' '.join(DEFAULT_SPECS)})")
    ap.add_argument("--seq-len", type=int, nargs="+", default=[128, 512, 2048],
                    help="sequence lengths T (default: 128 512 2048)")
    ap.add_argument("--batch-size", type=int, default=2, help="batch size B (default: 2)")
    ap.add_argument("--steps", type=int, default=3,
                    help="timed steps per measurement after one warm-up (median; default 3)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads in the workers (default: torch's)")
    ap.add_argument("--mode", choices=("forward", "train", "both"), default="both")
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    ap.add_argument("--timeout", type=float, default=1800.0,
                    help="seconds per (spec, length) before it is reported as a timeout")
    ap.add_argument("--memory-limit-mb", type=float, default=None,
                    help="cap each worker's address space at its size after building + this "
                         "(CPU, Linux): larger lengths report OOM instead of swapping")
    ap.add_argument("--backends", nargs="+", default=["all"], metavar="NAME",
                    help="scan backends to prefer, a row each: all (default: every registered "
                         "backend available here), auto (the registry's choice) or backend names")
    ap.add_argument("--reference-max-T", type=int, default=512,
                    help="run the reference backend's rows only for T up to this (default 512)")
    ap.add_argument("--flops", action=argparse.BooleanOptionalAction, default=True,
                    help="count FLOPs and time the matmul peak (default: on)")
    ap.add_argument("--json", action="store_true", help="print one JSON list of records")
    ap.add_argument("--quick", action="store_true", help="T=16, 1 timed step (smoke test)")
    ap.add_argument("--worker", metavar="JOB", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.worker is not None:
        return _worker(args.worker)
    if args.quick:
        args.seq_len, args.steps = [16], 1
    from ..spec import load_spec

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: device {device!r} requested but CUDA is not available", file=sys.stderr)
        return 2
    bad = [n for n in (args.seq_len + [args.batch_size, args.steps]) if n < 1]
    if bad:
        print(f"error: --seq-len, --batch-size and --steps must be positive (got {bad[0]})",
              file=sys.stderr)
        return 2
    try:
        backends = resolve_backends(args.backends)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    specs = []
    for name in args.specs or list(DEFAULT_SPECS):
        path = resolve_spec(name)
        try:
            spec = load_spec(path)
        except Exception as exc:  # noqa: BLE001 - one clean line, no traceback
            print(f"error: spec {name!r}: {'; '.join(str(exc).splitlines()) or type(exc).__name__}",
                  file=sys.stderr)
            return 2
        specs.append((path, spec))
    threads = args.threads or torch.get_num_threads()
    peak = bandwidth = None
    if args.flops:
        own = torch.get_num_threads()
        torch.set_num_threads(threads)  # the workers' count, so the ceilings are theirs
        peak = matmul_peak_gflops(torch.device(device))
        bandwidth = memory_bandwidth_gb_s(torch.device(device))
        torch.set_num_threads(own)
    header = (f"# nlframe bench model: torch {torch.__version__}, device {device}, "
              f"{threads} threads ({os.cpu_count()} CPUs), load average {load_average()}, "
              f"python {platform.python_version()}; B={args.batch_size}, "
              f"T={' '.join(map(str, args.seq_len))}, mode {args.mode}, median of {args.steps} "
              "step(s) after 1 warm-up, a fresh process per row"
              + (f"; float32 matmul peak {peak:.1f} GFLOP/s, memory bandwidth "
                 f"{bandwidth:.1f} GB/s" if peak else ""))
    log = sys.stderr if args.json else sys.stdout
    print(header, file=log, flush=True)
    records = []
    for path, spec in specs:
        label = spec_label(path)
        desc = getattr(spec, "description", None)
        first = True
        for T in args.seq_len:
            for backend in backends:
                if backend == "reference" and T > args.reference_max_T:
                    print(f"{label} T={T}: reference not run (T > --reference-max-T "
                          f"{args.reference_max_T})", file=log, flush=True)
                    continue
                job = dict(spec=path, label=label, seq_len=T, batch_size=args.batch_size,
                           steps=args.steps, mode=args.mode, device=device, threads=threads,
                           memory_limit_mb=args.memory_limit_mb, backend=backend,
                           flops=args.flops)
                rec = run_worker(job, args.timeout)
                if first and rec.get("params") is not None:
                    print(f"## {label}: {rec['params']:,} parameters"
                          + (f" — {desc}" if desc else ""), file=log, flush=True)
                    first = False
                print(f"{label} T={T} backend {backend}: forward {_fmt(rec.get('forward_tok_s'))} "
                      f"tok/s, train {_fmt(rec.get('train_tok_s'))} tok/s, peak RSS "
                      f"{_fmt(rec.get('peak_rss_mb'), ',.1f')} MB, {shown_status(rec)}", file=log,
                      flush=True)
                no_levels = rec["status"] == "ok" and rec.get("levels") == {}
                if no_levels:  # no backend ran: the row is of none, and no ratio to itself
                    rec["backend"] = None
                records.append(rec)
                if no_levels:
                    if len(backends) > 1:
                        print(f"{label} has no scan levels: one row per length (no backend "
                              "applies)", file=log, flush=True)
                    break
    add_ratios(records, peak, bandwidth)
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        print()
        print(format_table(records, device))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
