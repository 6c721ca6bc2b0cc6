"""Step time of ``nlframe.optim.Optimizer`` rules against their torch.optim twins.

On a transformer-shaped stack of linear layers and layer norms (about 10M
parameters by default) with fixed random gradients, times ``step()`` of
``Optimizer(rule="adam")`` vs ``torch.optim.Adam(foreach=True)`` (all params)
and ``Optimizer(rule="muon")`` vs ``torch.optim.Muon`` (the 2-D params of a
smaller model by default: both run Newton–Schulz in bfloat16, slow on CPUs),
interleaving the two so drift in machine load hits both alike; reports the
median over repeats and the ratio ours / torch (target ≤ 1.2).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
from torch import nn

from ..optim import Optimizer


def make_model(dim: int, layers: int, dtype: torch.dtype) -> nn.Module:
    """``layers`` blocks of qkv/out/MLP linears and two layer norms (``12·dim²`` weights each)."""
    blocks = []
    for _ in range(layers):
        blocks += [nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim),
                   nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)]
    model = nn.Sequential(*blocks).to(dtype)
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen, dtype=dtype) * 1e-2
    return model


def _time(step: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def compare(ours, theirs, repeats: int, warmup: int) -> tuple[float, float]:
    """Median seconds per step of ``ours`` and ``theirs``, interleaved."""
    for _ in range(warmup):
        ours.step()
        theirs.step()
    a, b = [], []
    for _ in range(repeats):
        a.append(_time(ours.step))
        b.append(_time(theirs.step))
    return statistics.median(a), statistics.median(b)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nlframe bench optim", description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    ap.add_argument("--muon-dim", type=int, default=128,
                    help="width of the muon model (bfloat16 Newton-Schulz is slow on CPUs)")
    ap.add_argument("--muon-layers", type=int, default=2)
    ap.add_argument("--muon-repeats", type=int, default=5)
    ap.add_argument("--only", choices=["adam", "muon"], default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    rows = []
    if args.only in (None, "adam"):
        m1, m2 = make_model(args.dim, args.layers, dtype), make_model(args.dim, args.layers, dtype)
        n = sum(p.numel() for p in m1.parameters())
        ours = Optimizer(m1.parameters(), rule="adam", lr=1e-3)
        theirs = torch.optim.Adam(m2.parameters(), lr=1e-3, foreach=True)
        a, b = compare(ours, theirs, args.repeats, args.warmup)
        rows.append(("adam", "torch.optim.Adam(foreach=True)", n, len(list(m1.parameters())), a, b))
    if args.only in (None, "muon"):
        m1 = make_model(args.muon_dim, args.muon_layers, dtype)
        m2 = make_model(args.muon_dim, args.muon_layers, dtype)
        p1 = [p for p in m1.parameters() if p.dim() == 2]
        p2 = [p for p in m2.parameters() if p.dim() == 2]
        ours = Optimizer(p1, rule="muon", lr=1e-3)
        theirs = torch.optim.Muon(p2, lr=1e-3)
        a, b = compare(ours, theirs, args.muon_repeats, 1)
        rows.append(("muon", "torch.optim.Muon", sum(p.numel() for p in p1), len(p1), a, b))
    print(f"optimizer step time, {args.dtype}, {torch.get_num_threads()} thread(s), median of "
          f"{args.repeats} (muon: {args.muon_repeats}) steps, torch {torch.__version__}\n")
    print("| rule | baseline | params | tensors | nlframe ms | torch ms | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for rule, base, n, k, a, b in rows:
        print(f"| {rule} | {base} | {n / 1e6:.2f}M | {k} | {a * 1e3:.2f} | {b * 1e3:.2f} | "
              f"{a / b:.2f} |")
    return 0
