"""The levels of the head-to-head HOPE alone, each with the chunked backend's fused
tiles against autograd through the plain tiles they replace (``FUSED_TILES`` off),
forward and backward, interleaved in one process:

* one CMS level per ``--chunks`` entry (``tile_recurrence.ChunkWriteTile``): an MLP memory
  dim → hidden → dim, chunk-start reads, chunk writes by GD (``θ = 0.01 / C``);
* the self-modifying Titans block (``dgd_tile.DGDWriteTile``): 4 heads, main memory and
  projection memories written by DGD every 8 tokens, residual MLPs of hidden dim / 4
  (per head) and dim (the projections), as in ``head_to_head.py``'s HOPE.

B sequences of T tokens, full and truncated inner gradient. Prints a Markdown table of
the median (range) seconds per forward + backward.

    python benchmarks/fused_levels.py [--seq-len 512] [--chunks 1 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

import torch

import nlframe
from nlframe.scan import initial_state, make_memory, make_rule
from nlframe_plugins.backends import chunked_levels
from nlframe_plugins.blocks.self_mod_titans import SelfModTitans


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


def titans_step(truncate: bool, *, B: int, T: int, dim: int, gen: torch.Generator,
                **_: object) -> None:
    """Forward and backward of a fresh self-modifying Titans block (weights from ``gen``)."""
    config = SelfModTitans.Config(
        heads=4, chunk_size=8, proj_chunk_size=8,
        memory={"type": "residual-mlp", "hidden": dim // 4},
        proj_memory={"type": "residual-mlp", "hidden": dim},
        inner_grad="truncated" if truncate else "full")
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2 ** 31, (), generator=gen)))
        block = SelfModTitans(config, dim)
    x = torch.randn(B, T, dim, generator=gen, requires_grad=True)
    y, _ = block(x)
    y.square().mean().backward()


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
    rows = [(f"CMS, C = {C}", lambda tr, C=C: level_step(C, tr, **size)) for C in args.chunks]
    rows.append(("self-modifying Titans", lambda tr: titans_step(tr, **size)))
    for _ in range(args.rounds):
        for name, step in rows:
            for truncate in (False, True):
                for fused in (True, False):
                    chunked_levels.FUSED_TILES = fused
                    t0 = time.perf_counter()
                    step(truncate)
                    times.setdefault((name, truncate, fused), []).append(time.perf_counter() - t0)
    chunked_levels.FUSED_TILES = True
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, B={args.batch_size}, "
          f"T={args.seq_len}, dim {args.dim}, hidden {args.hidden}, {args.rounds} rounds")
    print("| level | inner_grad | plain tiles (autograd), s | fused tiles, s | speed-up |")
    print("|---|---|---|---|---|")

    def cell(ts: list[float]) -> tuple[float, str]:
        ts = sorted(ts)
        mid = ts[len(ts) // 2]
        return mid, f"{mid:.2f} ({ts[0]:.2f}–{ts[-1]:.2f})"

    for name, _ in rows:
        for truncate in (False, True):
            p, p_txt = cell(times[(name, truncate, False)])
            f, f_txt = cell(times[(name, truncate, True)])
            print(f"| {name} | {'truncated' if truncate else 'full'} | {p_txt} | {f_txt} | {p / f:.2f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
