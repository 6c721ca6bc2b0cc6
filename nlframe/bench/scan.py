"""Throughput of every scan backend side by side, against ``reference``, ``chunked`` and
the machine's matmul peak.

Workload (``--memory``): the Titans level — per-token θ ∈ [0, 0.5], α ∈ [0,
``--decay``] (default 0.01), η ∈ [0, 0.9] with momentum (``--rule momentum``) or η = 0
(``--rule gd``), unit-norm keys (and values, for an ``mlp`` memory, which diverges on
values of norm √D), read after write, in ``--dtype`` (default float32) —
on a ``linear`` memory (at ``--chunk-size 1`` the delta rule, with momentum or, with
``gd``, the gated delta rule) or an ``mlp`` memory of hidden width ``--hidden``. For
every shape and every backend that is available here and supports the request
(``--backends``, default all registered):

* **forward**: ``memory_scan`` under ``torch.no_grad()``;
* **train**: forward with every input and the initial state requiring gradients,
  then backward of ``(y·w).sum()`` (fixed random ``w``).

Tokens/s is ``B·T`` per second (all heads). Times are the median of ``--repeats``
calls per backend, timed in turn (A, B, C, A, B, C, …) after one warm-up call each,
so load from other processes hits all alike (a ``compiled`` warm-up compiles). The
``reference`` token loop runs only for ``T ≤ --reference-max-T``; nothing is
extrapolated.

FLOPs: ``counted`` is what the backend executed (``torch.utils.flop_counter``, one
untimed call; a ``compiled`` call cannot be counted from outside its graph, so it is
given its eager twin ``chunked``'s count, the same graph; ``-`` where no count is
possible, e.g. fused kernels). ``useful`` is the minimal matmul count of the
recurrence itself, per token and head: linear ``3 · 2DkDv`` (read ``W_c k``, the
rank-1 gradient, read ``W q``), MLP ``4 · 2(DkDh + DhDv)`` (the memory's forward and
backward at ``k``, the read at ``q``); training ×3. ``useful GFLOP/s`` is that count
per second and is what the peak column compares: the matmul peak is the best
GFLOP/s of square ``N×N`` matmuls of ``--dtype`` (N = 512, 1024, 2048) on the same
device, timed in the same run. The header also gives the device's memory bandwidth
(:func:`memory_bandwidth_gb_s`, STREAM's add over buffers larger than the caches): the
ceiling of element-wise work whose tensors miss the caches, the other limit a backend
short of the matmul peak meets.

Error: ``rel_err`` is ``‖y − y₆₄‖ / ‖y₆₄‖`` of each row's forward read against the
``reference`` loop run in float64 on the same inputs (for ``T ≤ --reference-max-T``).

Yardstick: with ``--rule gd`` on the delta rule, flash-linear-attention's chunk
kernels join as rows ``fla-delta-rule`` and ``fla-gated-delta-rule`` where they are
installed and can run (a CUDA device, half precision; :mod:`nlframe.bench.fla` says
how they are given the same function), and every row gets ``vs_fla``, its tokens/s
over the faster of them (``--no-fla``: leave them out).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Callable

import torch

from ..registry import get_registry
from ..scan import make_memory, make_objective, make_request, make_rule, memory_scan
from .fla import KERNELS as FLA_ROWS

MODES = ("forward", "train")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def say(args: argparse.Namespace, line: str) -> None:
    """A diagnostic line: to stdout beside the table, to stderr beside ``--json``."""
    print(line, file=sys.stderr if args.json else sys.stdout, flush=True)


def load_average() -> str:
    """The 1-minute load average, e.g. ``3.10`` (``n/a`` where the OS has none)."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except (OSError, AttributeError):  # not available on this platform
        return "n/a"


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Best of ``repeats`` timed calls after one warm-up call (seconds)."""
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: dict[str, int],
                      warmups: dict[str, Callable[[], object]] | None = None) -> dict[str, float]:
    """Median seconds per call of each of ``fns``, timed in turn (A, B, A, B, …) after one
    warm-up call each (``warmups[name]`` if given, else ``fns[name]``); ``repeats[name]``
    timed calls of ``name`` (≥ 1)."""
    for name, fn in fns.items():
        (warmups or {}).get(name, fn)()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(max(repeats.values())):
        for name, fn in fns.items():
            if r < repeats[name]:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype = torch.float32,
                       sizes: tuple[int, ...] = (512, 1024, 2048), repeats: int = 3) -> float:
    """Best GFLOP/s of square ``N×N`` matmuls over ``sizes`` on ``device``."""
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)

        def mm() -> None:
            a @ b
            _sync(device)

        best = max(best, 2.0 * n**3 / best_time(mm, repeats) / 1e9)
    return best


def memory_bandwidth_gb_s(device: torch.device, mib: int = 64, repeats: int = 3) -> float:
    """Best GB/s of ``c = a + b`` over three float32 buffers of ``mib`` MiB each on
    ``device`` (STREAM's add: ``3 · mib`` MiB moved per call). The default is larger than
    the last-level cache of most CPUs and GPUs, so the rate is that of main memory (pass
    a larger ``mib`` where the cache is larger)."""
    n = mib * 2**20 // 4
    a, b = (torch.empty(n, device=device).uniform_() for _ in range(2))
    c = torch.empty_like(a)  # written by the warm-up call

    def add() -> None:
        torch.add(a, b, out=c)
        _sync(device)

    return 3 * n * 4 / best_time(add, repeats) / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def useful_flops(memory: str, Dk: int, Dv: int, hidden: int) -> float:
    """Minimal forward matmul FLOPs per token and head (module docstring)."""
    if memory == "linear":
        return 3 * 2.0 * Dk * Dv
    return 4 * 2.0 * (Dk * hidden + hidden * Dv)


class Workload:
    """Inputs of one shape, and a call of ``memory_scan`` on any backend."""

    def __init__(self, args: argparse.Namespace, B: int, T: int, D: int, device: torch.device):
        H, self.args, self.device = args.heads, args, device
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(B, H, T, D, generator=gen) for _ in range(3))
        k = k / k.norm(dim=-1, keepdim=True)
        if args.memory == "mlp":
            # unit-norm values too: with θ up to 0.5 and values of norm √D, the MLP memory
            # at titans-pytorch's size (256 → 1024 → 256, T = 512) diverged near token 100,
            # and every later token timed arithmetic on NaNs
            v = v / v.norm(dim=-1, keepdim=True)
        self.tensors = dict(q=q, k=k, v=v, lr=0.5 * torch.rand(B, H, T, generator=gen),
                            decay=args.decay * torch.rand(B, H, T, generator=gen),
                            momentum=0.9 * torch.rand(B, H, T, generator=gen))
        if args.rule == "gd":
            del self.tensors["momentum"]  # η = 0
        self.dtype = DTYPES[args.dtype]
        self.tensors = {n: x.to(device, self.dtype) for n, x in self.tensors.items()}
        self.memory_kwargs = {"hidden": args.hidden} if args.memory == "mlp" else {}
        self.memory = make_memory(args.memory, D, D, **self.memory_kwargs)
        self.init = {n: p.to(device, self.dtype)
                     for n, p in self.memory.init_params(generator=gen).items()}
        self.weight = torch.randn(B, H, T, D, generator=gen).to(device, self.dtype)
        self.B, self.H, self.T, self.D = B, H, T, D
        self._fla: dict[str, Any] = {}

    def scan_kwargs(self, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
        """``memory_scan``'s keyword arguments of this workload, on ``tensors``."""
        return dict(memory=self.args.memory, objective=self.args.objective, optimizer="momentum",
                    lr=tensors["lr"], decay=tensors["decay"],
                    momentum=tensors.get("momentum", 0.0), chunk_size=self.args.chunk_size,
                    memory_kwargs=self.memory_kwargs)

    def request(self):
        """The request a call makes, for ``Backend.supports``."""
        t = self.tensors
        return make_request(t["q"], t["k"], t["v"],
                            memory=self.memory,
                            objective=make_objective(self.args.objective), rule=make_rule("momentum"),
                            names={"memory": self.args.memory, "objective": self.args.objective,
                                   "optimizer": "momentum"},
                            lr=t["lr"], decay=t["decay"], momentum=t.get("momentum", 0.0),
                            chunk_size=self.args.chunk_size)

    def state(self, init: dict[str, torch.Tensor]):
        """A fresh scan state from the initial parameters ``init``."""
        from ..scan import initial_state

        return initial_state(self.memory, make_rule("momentum"), batch=self.B, heads=self.H,
                             params=init, chunk_size=self.args.chunk_size)

    def output(self, backend: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The forward read of ``backend`` (inputs cast to ``dtype`` if given), no gradients."""
        cast = (lambda x: x.to(dtype)) if dtype is not None else (lambda x: x)
        t = {n: cast(x) for n, x in self.tensors.items()}
        with torch.no_grad():
            y, _ = memory_scan(t["q"], t["k"], t["v"], **self.scan_kwargs(t), backend=backend,
                               state=self.state({n: cast(p) for n, p in self.init.items()}),
                               check_finite=False)
        return y

    def fla(self, name: str):
        """flash-linear-attention's row ``name`` on these inputs (:mod:`nlframe.bench.fla`)."""
        from .fla import FlaCall

        if name not in self._fla:  # inputs laid out once per row
            self._fla[name] = FlaCall(name, self.tensors, self.init["W"], self.weight)
        return self._fla[name]

    def call(self, backend: str, mode: str) -> Callable[[], None]:
        if backend in FLA_ROWS:
            return self.fla(backend).call(mode, lambda: _sync(self.device))

        def run() -> None:
            train = mode == "train"
            t = {n: x.detach().requires_grad_(train) for n, x in self.tensors.items()}
            init = {n: p.detach().requires_grad_(train) for n, p in self.init.items()}
            state = self.state(init)
            with torch.set_grad_enabled(train):
                y, _ = memory_scan(t["q"], t["k"], t["v"], **self.scan_kwargs(t),
                                   backend=backend, state=state, check_finite=False)
                if train:
                    (y * self.weight).sum().backward()
            _sync(self.device)

        return run


def relative_errors(work: Workload, names: list[str]) -> dict[str, float]:
    """``‖y − y₆₄‖ / ‖y₆₄‖`` of each row's forward read against the float64 reference loop."""
    from ..testing.assertions import rel_rmse

    exact = work.output("reference", torch.float64)
    return {n: rel_rmse(work.fla(n).output() if n in FLA_ROWS else work.output(n), exact)
            for n in names}


def counted_flops(run: Callable[[], None]) -> float:
    """FLOPs executed by one call of ``run`` (``torch.utils.flop_counter``)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    return float(counter.get_total_flops())


def fla_reason(args: argparse.Namespace, name: str, device: torch.device) -> str | None:
    """Why flash-linear-attention's row ``name`` cannot time this run (``None``: it can)."""
    from .fla import unavailable_reason

    return unavailable_reason(name, memory=args.memory, objective=args.objective, rule=args.rule,
                              chunk_size=args.chunk_size, decay=args.decay, device=device,
                              dtype=DTYPES[args.dtype])


def backends_for(work: Workload, names: list[str]) -> tuple[list[str], dict[str, str]]:
    """Backends of ``names`` that run ``work`` here, and why each other one does not."""
    registry = get_registry()
    ok, skipped = [], {}
    request = work.request()
    for name in names:
        impl = registry.get("backend", name)()
        reason = impl.unavailable_reason() or impl.supports(request)
        if reason:
            skipped[name] = reason
        else:
            ok.append(name)
    return ok, skipped


def measure(args: argparse.Namespace, B: int, T: int, D: int, device: torch.device,
            peak: float, bandwidth: float | None = None) -> list[dict[str, Any]]:
    """Records of every backend and mode at one shape (``peak``: the matmul peak in
    GFLOP/s, ``bandwidth``: the memory bandwidth in GB/s, both measured in this run)."""
    work = Workload(args, B, T, D, device)
    names, skipped = backends_for(work, args.backends)
    names += args.fla_rows
    for name, why in skipped.items():
        say(args, f"# B={B} T={T} D={D}: {name} skipped: {why}")
    checked = T <= args.reference_max_T
    if not checked and "reference" in names:
        names.remove("reference")
        say(args, f"# B={B} T={T} D={D}: reference not timed (T > --reference-max-T "
                  f"{args.reference_max_T})")
    if not names:
        say(args, f"# B={B} T={T} D={D}: no backend asked for runs this workload")
        return []
    errors = relative_errors(work, names) if checked else dict.fromkeys(names)
    per_token = useful_flops(args.memory, D, D, args.hidden) * args.heads
    records = []
    for mode in args.modes:
        fns = {n: work.call(n, mode) for n in names}
        reps = {n: 1 if n == "reference" else max(args.repeats, 1) for n in names}
        times = interleaved_times(fns, reps)
        counts: dict[str, float | None] = {}
        for n in names:
            twin = "chunked" if n == "compiled" else n  # the same graph, countable eagerly
            if twin not in counts:
                counts[twin] = (counted_flops(work.call(twin, mode))
                                if twin in ("reference", "chunked") else None)
            counts[n] = counts[twin]  # None: kernels outside torch's dispatcher
        useful = per_token * B * T * (3 if mode == "train" else 1)
        for n in names:
            tok_s = B * T / times[n]
            records.append(dict(
                backend=n, mode=mode, memory=args.memory, objective=args.objective,
                chunk_size=args.chunk_size, B=B, H=args.heads, T=T, D=D,
                hidden=args.hidden if args.memory == "mlp" else None,
                rule=args.rule, dtype=args.dtype, seconds=times[n], tok_s=tok_s,
                rel_err=errors[n],
                counted_gflop=None if counts[n] is None else counts[n] / 1e9,
                useful_gflop=useful / 1e9, useful_gflop_s=useful / times[n] / 1e9,
                peak_gflop_s=peak, pct_of_peak=100 * useful / times[n] / 1e9 / peak,
                bandwidth_gb_s=bandwidth,
                threads=torch.get_num_threads(), load=load_average(), device=str(device)))
        by = {r["backend"]: r["tok_s"] for r in records if r["mode"] == mode}
        for r in records:
            if r["mode"] == mode:
                r["vs_reference"] = r["tok_s"] / by["reference"] if "reference" in by else None
                r["vs_chunked"] = r["tok_s"] / by["chunked"] if "chunked" in by else None
                fla_best = max((by[n] for n in FLA_ROWS if n in by), default=None)
                r["vs_fla"] = r["tok_s"] / fla_best if fla_best else None
        if not args.json:
            shown = ", ".join(f"{n} {by[n]:,.0f}" for n in names)
            print(f"B={B} H={args.heads} T={T} D={D} {mode}: tok/s {shown}; load {load_average()}",
                  flush=True)
    return records


def _ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}×" if x < 10 else f"{x:.0f}×"


def format_table(records: list[dict[str, Any]]) -> str:
    fla = any(r.get("vs_fla") is not None for r in records)
    head = ["backend", "mode", "B", "H", "T", "D", "tok/s", "× reference", "× chunked",
            *(["× FLA"] if fla else []), "counted GFLOP", "useful GFLOP/s", "% of matmul peak",
            "rel. error"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        counted = "—" if r["counted_gflop"] is None else f"{r['counted_gflop']:.3g}"
        error = ("—" if r["rel_err"] is None else f"{r['rel_err']:.1e}"
                 if math.isfinite(r["rel_err"]) else "non-finite")
        cells = [r["backend"], r["mode"], r["B"], r["H"], r["T"], r["D"], f"{r['tok_s']:,.0f}",
                 _ratio(r["vs_reference"]), _ratio(r["vs_chunked"]),
                 *([_ratio(r["vs_fla"])] if fla else []), counted,
                 f"{r['useful_gflop_s']:.1f}", f"{r['pct_of_peak']:.1f}%", error]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="nlframe bench scan", description=__doc__.splitlines()[0])
    ap.add_argument("--backends", nargs="+", default=None, metavar="NAME",
                    help="backends to time (default: every registered one)")
    ap.add_argument("--memory", choices=("linear", "mlp"), default="linear")
    ap.add_argument("--hidden", type=int, default=256, help="MLP memory hidden width")
    ap.add_argument("--objective", default="l2", choices=["l2", "dot"])
    ap.add_argument("--rule", choices=("momentum", "gd"), default="momentum",
                    help="momentum η ∈ [0, 0.9] per token, or gd (η = 0: the gated delta rule "
                         "at chunk size 1 on a linear memory)")
    ap.add_argument("--decay", type=float, default=0.01,
                    help="per-token retention gates α are drawn from [0, DECAY]")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                    help="inputs, state and the matmul peak in this dtype (backends that "
                         "take only float32 are skipped with the reason)")
    ap.add_argument("--no-fla", action="store_true",
                    help="leave out flash-linear-attention's kernels as yardstick rows")
    ap.add_argument("--chunk-size", type=int, default=1)
    ap.add_argument("--batch", type=int, nargs="+", default=[2])
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--dim", type=int, nargs="+", default=[64])
    ap.add_argument("--mode", choices=("forward", "train", "both"), default="both")
    ap.add_argument("--reference-max-T", type=int, default=512,
                    help="time the reference loop only for T up to this")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per backend and shape")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--json", action="store_true", help="print one JSON list of records")
    ap.add_argument("--quick", action="store_true", help="B=1, T=64, D=16, one repeat")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.seq, args.dim, args.repeats, args.hidden = [1], [64], [16], 1, 32
    registry = get_registry()
    known = registry.names("backend")
    args.backends = args.backends or sorted(known, key=lambda n: -registry.get("backend", n).priority)
    unknown = [n for n in args.backends if n not in known]
    if unknown:
        ap.error(f"unknown backend(s) {', '.join(unknown)}; registered: {', '.join(known)}")
    if not 0 <= args.decay < 1:
        ap.error(f"--decay {args.decay}: retention gates must lie in [0, 1)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available here")
    args.modes = MODES if args.mode == "both" else (args.mode,)
    fla_skipped = {} if args.no_fla else {n: fla_reason(args, n, device) for n in FLA_ROWS}
    args.fla_rows = [n for n, why in fla_skipped.items() if why is None]
    peak = matmul_peak_gflops(device, DTYPES[args.dtype])
    bandwidth = memory_bandwidth_gb_s(device)
    if not args.json:
        print(f"# scan benchmark: {args.memory}/{args.objective}/{args.rule}, decay ≤ "
              f"{args.decay}, chunk_size={args.chunk_size}, H={args.heads}, {args.dtype} on "
              f"{device}, backends "
              f"{', '.join(args.backends)}; {torch.get_num_threads()} threads, load average "
              f"{load_average()} on {os.cpu_count()} CPUs, torch {torch.__version__}; matmul "
              f"peak {peak:.1f} GFLOP/s, memory bandwidth {bandwidth:.1f} GB/s")
    for n, why in fla_skipped.items():
        if why:
            say(args, f"# {n} not timed: {why}")
    records = []
    for D in args.dim:
        for B in args.batch:
            for T in args.seq:
                records += measure(args, B, T, D, device, peak, bandwidth)
    if args.json:
        print(json.dumps(records, indent=1))
    else:
        print()
        print(format_table(records))
    return 0
