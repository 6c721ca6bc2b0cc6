"""One CMS level of the head-to-head HOPE alone: the fused tile loop of the chunked
backend (``tile_recurrence.ChunkWriteTile``) against autograd through the plain loop it
replaces, forward and backward, interleaved in one process.

The level: an MLP memory dim → hidden → dim, chunk-start reads, chunk writes by GD
(``θ = 0.01 / C``), B sequences of T tokens, full and truncated inner gradient. Prints a
Markdown table of the median (range) seconds per forward + backward.

    python benchmarks/cms_levels.py [--seq-len 512] [--chunks 1 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

import torch

import nlframe
from nlframe.scan import initial_state, make_memory, make_rule
from nlframe_plugins.backends import chunked_levels


def level_step(C: int, truncate: bool, *, B: int, T: int, dim: int, hidden: int,
               gen: torch.Generator) -> None:
    """Forward and backward of one level over fresh inputs (weights from ``gen``)."""
    q, k, v = (torch.randn(B, 1, T, dim, generator=gen) for _ in range(3))
    k = k / dim ** 0.5
    W1 = (torch.randn(1, 1, hidden, dim, generator=gen) / dim ** 0.5).requires_grad_()
    W2 = (torch.randn(1, 1, dim, hidden, generator=gen) / hidden ** 0.5).requires_grad_()
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    memory = make_memory("mlp", dim, dim, hidden=hidden)
    state = initial_state(memory, make_rule("momentum"), batch=B, heads=1, chunk_size=C,
                          params={"W1": W1.expand(B, 1, hidden, dim),
                                  "W2": W2.expand(B, 1, dim, hidden)})
    y, final = nlframe.memory_scan(
        q, k, v, memory="mlp", objective="l2", optimizer="momentum",
        lr=torch.full((B, 1, T), 0.01 / C), chunk_size=C, backend="chunked",
        read="chunk_start", write="chunk", memory_kwargs={"hidden": hidden}, state=state,
        truncate=truncate)
    loss = y.square().mean() + sum(p.square().mean() for p in final.params.values())
    loss.backward()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--chunks", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    gen = torch.Generator().manual_seed(0)
    times: dict[tuple, list[float]] = {}
    size = dict(B=args.batch_size, T=args.seq_len, dim=args.dim, hidden=args.hidden, gen=gen)
    for _ in range(args.rounds):
        for C in args.chunks:
            for truncate in (False, True):
                for fused in (True, False):
                    chunked_levels.FUSED_TILES = fused
                    t0 = time.perf_counter()
                    level_step(C, truncate, **size)
                    times.setdefault((C, truncate, fused), []).append(time.perf_counter() - t0)
    chunked_levels.FUSED_TILES = True
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, B={args.batch_size}, "
          f"T={args.seq_len}, dim {args.dim}, hidden {args.hidden}, {args.rounds} rounds")
    print("| C | inner_grad | plain loop (autograd), s | fused tile loop, s | speed-up |")
    print("|---|---|---|---|---|")

    def cell(ts: list[float]) -> tuple[float, str]:
        ts = sorted(ts)
        mid = ts[len(ts) // 2]
        return mid, f"{mid:.2f} ({ts[0]:.2f}–{ts[-1]:.2f})"

    for C in args.chunks:
        for truncate in (False, True):
            p, p_txt = cell(times[(C, truncate, False)])
            f, f_txt = cell(times[(C, truncate, True)])
            print(f"| {C} | {'truncated' if truncate else 'full'} | {p_txt} | {f_txt} | {p / f:.2f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
