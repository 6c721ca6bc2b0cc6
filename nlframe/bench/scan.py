"""Throughput of the scan backends: ``chunked`` vs ``reference`` and vs matmul peak.

Workload: the delta rule with momentum — ``memory="linear"``, ``objective="l2"``,
``chunk_size=1`` by default, per-token θ ∈ [0, 0.5], α ∈ [0, 0.01], η ∈ [0, 0.9],
unit-norm keys, float32, forward only (``torch.no_grad``). For every shape it
reports the chunked backend's tokens/s (``B·T`` per second, all heads), the
matmul FLOPs the chunked algorithm actually performs per second, beside the
GFLOP/s of a plain batched ``(T×D)·(D×D)`` matmul per head timed in the same
run, and — for ``T ≤ --reference-max-T`` — the reference token loop's tokens/s
and the ratio chunked / reference at equal shapes (nothing is extrapolated).
Times are the best of ``--repeats`` runs; a line per shape, then a markdown table.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

from ..scan import memory_scan


def chunked_matmul_flops(T: int, heads: int, dk: int, dv: int, chunk: int, tile: int,
                         affine: bool = True, solve: bool = True) -> float:
    """Matmul FLOPs of the chunked linear scan (``plugins/backends/chunked_linear.py``)
    for ``heads = B·H`` sequences of ``T`` tokens: gate kernel (``A = Dm·Bθ``,
    ``c = Dm·P``), per-tile products and the loop over tiles. Elementwise work and
    the triangular inverse's O(L³/3) are counted only where stated."""
    if affine and 2 * chunk <= tile:  # chunk-aligned tiles with the UT solve
        L = chunk * (tile // chunk)
        pre = 2 * L**3 + 2 * L**2 + 2 * L**2 * dk  # A, c, Q Kᵀ
        loop = 2 * L**2 * dv + 4 * L * dk * dv + 4 * L * dk * dv  # Y, end state
        if solve:
            pre += 2 * L**2 * dk + L**3 + 4 * L**2 * dk  # K Kᵀ, (I+N)⁻¹, G_D K, G_C K
            loop += 4 * L * dk * dv + 2 * L**2 * dv  # E
    else:  # tiles inside chunks, gradients at the chunk start
        L = -(-chunk // -(-chunk // tile))
        pre = 2 * L**3 + 2 * L**2 + 2 * L**2 * dk
        loop = 2 * L * dk * dv + 4 * L * dk * dv + 2 * L**2 * dv + 4 * L * dk * dv
    tiles = -(-T // L)
    return float(heads * tiles * (pre + loop))


def best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


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
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--quick", action="store_true",
                    help="one small shape (B=1, T=1024, D=64), one repeat")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.seq, args.dim, args.repeats = [1], [1024], [64], 1
    if args.threads:
        torch.set_num_threads(args.threads)
    from nlframe_plugins.backends.chunked import ChunkedBackend

    tile = ChunkedBackend.tile
    print(f"# scan benchmark: linear/{args.objective}/momentum, chunk_size={args.chunk_size}, "
          f"H={args.heads}, float32, tile={tile}, threads={torch.get_num_threads()}")
    rows = []
    for D in args.dim:
        for B in args.batch:
            for T in args.seq:
                q, k, v, gates = inputs(B, args.heads, T, D)
                kw = dict(memory="linear", objective=args.objective, chunk_size=args.chunk_size,
                          check_finite=False, **gates)

                def run(backend: str) -> None:
                    with torch.no_grad():
                        memory_scan(q, k, v, backend=backend, **kw)

                t_chunked = best_time(lambda: run("chunked"), args.repeats)
                peak = matmul_gflops(B, args.heads, T, D, args.repeats)
                flops = chunked_matmul_flops(T, B * args.heads, D, D, args.chunk_size, tile,
                                             solve=args.objective == "l2")
                row = dict(B=B, T=T, D=D, chunked=B * T / t_chunked, gflops=flops / t_chunked / 1e9,
                           peak=peak, ref=None)
                if T <= args.reference_max_T:
                    t_ref = best_time(lambda: run("reference"), 1)
                    row["ref"] = B * T / t_ref
                rows.append(row)
                ref = f"{row['ref']:.0f}" if row["ref"] else "-"
                print(f"B={B} T={T} D={D}: chunked {row['chunked']:.0f} tok/s, "
                      f"{row['gflops']:.1f} GFLOP/s (matmul {peak:.1f}); reference {ref} tok/s",
                      flush=True)
    print()
    print("| B | H | T | D | chunked tok/s | reference tok/s | chunked/reference | "
          "chunked GFLOP/s | matmul GFLOP/s | % of matmul |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = f"{r['ref']:.0f}" if r["ref"] else "—"
        ratio = f"{r['chunked'] / r['ref']:.0f}×" if r["ref"] else "—"
        print(f"| {r['B']} | {args.heads} | {r['T']} | {r['D']} | {r['chunked']:.0f} | {ref} | "
              f"{ratio} | {r['gflops']:.1f} | {r['peak']:.1f} | "
              f"{100 * r['gflops'] / r['peak']:.0f}% |")
    return 0
