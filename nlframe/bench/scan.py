"""Throughput of the scan backends: ``chunked`` vs ``reference`` and vs matmul peak.

Workload: the delta rule with momentum — ``memory="linear"``, ``objective="l2"``,
``chunk_size=1`` by default, per-token θ ∈ [0, 0.5], α ∈ [0, 0.01], η ∈ [0, 0.9],
unit-norm keys, float32, forward only (``torch.no_grad``). For every shape it
reports the chunked backend's tokens/s (``B·T`` per second, all heads), the
matmul FLOPs the chunked algorithm actually performs per second, beside the
GFLOP/s of a plain batched ``(T×D)·(D×D)`` matmul per head timed in the same
run, and — for ``T ≤ --reference-max-T`` — the reference token loop's tokens/s
and the ratio chunked / reference at equal shapes (nothing is extrapolated).
Both backends run under identical conditions: the same thread count, one
warm-up call each, their timed calls interleaved (chunked, reference, chunked,
…) so that load from other processes hits both alike; times are the median of
the timed calls. The output states the thread count, the load average and the
exact tensor shapes; a line per shape, then a markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

import torch

from ..scan import memory_scan


def chunked_matmul_flops(T: int, heads: int, dk: int, dv: int, chunk: int, tile: int,
                         affine: bool = True, solve: bool = True) -> float:
    """Matmul FLOPs of the chunked linear scan (``plugins/backends/chunked_linear.py``)
    for ``heads = B·H`` sequences of ``T`` tokens: gate kernel (``A = Dm·Bθ``,
    ``c = Dm·P``), per-tile products and the loop over tiles. Elementwise work is
    not counted; the triangular inverse is counted as ``L³/3``."""
    if affine and 2 * chunk <= tile:  # chunk-aligned tiles with the UT solve
        L = chunk * (tile // chunk)
        pre = 2 * L**3 + 2 * L**2 + 2 * L**2 * dk  # A, c, Q Kᵀ
        loop = 2 * L**2 * dv + 4 * L * dk * dv + 4 * L * dk * dv  # Y, end state
        if solve:
            pre += 2 * L**2 * dk + L**3 / 3 + 2 * L**2 * dv  # K Kᵀ, (I+N)⁻¹, (I+N)⁻¹ V
            loop += 4 * L * dk * dv + 2 * L**2 * dv  # E = E_V + (I+N)⁻¹ ([aD̃∘K | ac̃∘K] Xᵀ)
    else:  # tiles inside chunks, gradients at the chunk start
        L = -(-chunk // -(-chunk // tile))
        pre = 2 * L**3 + 2 * L**2 + 2 * L**2 * dk
        loop = 2 * L * dk * dv + 4 * L * dk * dv + 2 * L**2 * dv + 4 * L * dk * dv
    tiles = -(-T // L)
    return float(heads * tiles * (pre + loop))


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


def load_average() -> str:
    """The 1-minute load average, e.g. ``3.10`` (``n/a`` where the OS has none)."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except (OSError, AttributeError):  # not available on this platform
        return "n/a"


def inputs(B: int, H: int, T: int, D: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, T, D, generator=gen) for _ in range(3))
    k = k / k.norm(dim=-1, keepdim=True)
    gates = dict(lr=0.5 * torch.rand(B, H, T, generator=gen),
                 decay=0.01 * torch.rand(B, H, T, generator=gen),
                 momentum=0.9 * torch.rand(B, H, T, generator=gen))
    return q, k, v, gates


def matmul_gflops(B: int, H: int, T: int, D: int, repeats: int) -> float:
    """GFLOP/s of ``(B·H, T, D) @ (B·H, D, D)`` — the scan's per-token work as one matmul."""
    a, w = torch.randn(B * H, T, D), torch.randn(B * H, D, D)
    return 2.0 * B * H * T * D * D / best_time(lambda: torch.bmm(a, w), max(repeats, 5)) / 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nlframe bench scan", description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq", type=int, nargs="+", default=[1024, 4096, 8192])
    ap.add_argument("--dim", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--chunk-size", type=int, default=1)
    ap.add_argument("--objective", default="l2", choices=["l2", "dot"])
    ap.add_argument("--reference-max-T", type=int, default=4096,
                    help="time the reference loop only for T up to this")
    ap.add_argument("--repeats", type=int, default=3, help="timed chunked calls per shape")
    ap.add_argument("--reference-repeats", type=int, default=1,
                    help="timed reference calls per shape (interleaved with the chunked ones)")
    ap.add_argument("--threads", type=int, nargs="+", default=None,
                    help="torch intra-op thread counts to run every shape with (default: torch's)")
    ap.add_argument("--quick", action="store_true",
                    help="one small shape (B=1, T=1024, D=64), three chunked repeats")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.seq, args.dim, args.repeats = [1], [1024], [64], 3
    from nlframe_plugins.backends.chunked import ChunkedBackend

    tile, H = ChunkedBackend.tile, args.heads
    threads = args.threads or [torch.get_num_threads()]
    print(f"# scan benchmark: linear/{args.objective}/momentum, chunk_size={args.chunk_size}, "
          f"H={H}, float32, forward (no_grad), tile={tile}, threads={threads}, "
          f"load average {load_average()} on {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"# shapes: q, k, v (B, {H}, T, D); lr, decay, momentum (B, {H}, T); timings: median of "
          f"{args.repeats} chunked / {args.reference_repeats} reference call(s), interleaved, "
          "after one warm-up each (reference: on the first 64 tokens)")
    rows = []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for D in args.dim:
            for B in args.batch:
                for T in args.seq:
                    rows.append(_measure(args, B, T, D, tile))
    print()
    print("| B | H | T | D | chunked tok/s | reference tok/s | chunked/reference | "
          "chunked GFLOP/s | matmul GFLOP/s | % of matmul | threads | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = f"{r['ref']:.0f}" if r["ref"] else "—"
        ratio = f"{r['chunked'] / r['ref']:.0f}×" if r["ref"] else "—"
        print(f"| {r['B']} | {H} | {r['T']} | {r['D']} | {r['chunked']:.0f} | {ref} | "
              f"{ratio} | {r['gflops']:.1f} | {r['peak']:.1f} | "
              f"{100 * r['gflops'] / r['peak']:.0f}% | {r['threads']} | {r['load']} |")
    return 0


def _measure(args, B: int, T: int, D: int, tile: int) -> dict:
    """One table row: chunked and (for ``T ≤ --reference-max-T``) reference tokens/s at
    ``(B, H, T, D)``, timed interleaved, and the matmul peak timed right after."""
    H = args.heads
    q, k, v, gates = inputs(B, H, T, D)
    kw = dict(memory="linear", objective=args.objective, chunk_size=args.chunk_size,
              check_finite=False, **gates)

    def run(backend: str, upto: int = T) -> None:
        with torch.no_grad():
            memory_scan(q[:, :, :upto], k[:, :, :upto], v[:, :, :upto], backend=backend,
                        **{n: x[:, :, :upto] if torch.is_tensor(x) else x for n, x in kw.items()})

    fns = {"chunked": lambda: run("chunked")}
    reps = {"chunked": max(args.repeats, 1)}
    warm = {}
    if T <= args.reference_max_T:
        fns["reference"] = lambda: run("reference")
        reps["reference"] = max(args.reference_repeats, 1)
        warm["reference"] = lambda: run("reference", min(T, 64))  # its cost is per token
    t = interleaved_times(fns, reps, warm)
    peak = matmul_gflops(B, H, T, D, args.repeats)
    flops = chunked_matmul_flops(T, B * H, D, D, args.chunk_size, tile,
                                 solve=args.objective == "l2")
    row = dict(B=B, T=T, D=D, chunked=B * T / t["chunked"], gflops=flops / t["chunked"] / 1e9,
               peak=peak, ref=B * T / t["reference"] if "reference" in t else None,
               threads=torch.get_num_threads(), load=load_average())
    ref = f"{row['ref']:.0f}" if row["ref"] else "-"
    print(f"B={B} H={H} T={T} D={D} threads={row['threads']}: chunked {row['chunked']:.0f} tok/s, "
          f"{row['gflops']:.1f} GFLOP/s (matmul {peak:.1f}); reference {ref} tok/s; "
          f"load {row['load']}", flush=True)
    return row
