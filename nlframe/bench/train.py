"""Training throughput of ready specs, side by side in one run.

Measures forward + backward + optimizer step tokens/s of ``hope-tiny``,
``titans-tiny`` and ``transformer-tiny`` at one batch shape, and — when the
public ``titans-pytorch`` package is importable — its ``NeuralMemory`` against
nlframe's ``titans`` block at the same width, heads and chunk size.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

SPECS = ("hope-tiny", "titans-tiny", "transformer-tiny")


def _specs_dir() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "specs").is_dir():
            return parent / "specs"
    raise FileNotFoundError("cannot find the specs/ directory next to the nlframe sources")


def _time(step, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def model_tokens_per_s(name: str, batch: int, seq_len: int, repeats: int, warmup: int) -> dict:
    from ..build import build
    from ..spec import load_spec
    from ..optim import build_optimizers
    from . import lm_train_step

    spec = load_spec(_specs_dir() / f"{name}.toml")
    torch.manual_seed(0)
    model = build(spec)
    opts = build_optimizers(model, spec.train)
    vocab = spec.model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, vocab, (batch, seq_len + 1), generator=g)
    b = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:]}

    dt = _time(lambda: lm_train_step(model, b, opts), repeats, warmup)
    params = sum(p.numel() for p in model.parameters())
    return {"model": name, "params": params, "tokens/s": batch * seq_len / dt, "ms/step": 1e3 * dt}


def titans_yardstick(batch: int, seq_len: int, repeats: int, warmup: int) -> list[dict]:
    """nlframe's titans memory (standalone layout) vs titans-pytorch NeuralMemory, forward +
    backward on RMS-normalised random inputs at titans-tiny's width, heads and chunk size."""
    try:
        from titans_pytorch import NeuralMemory
    except ImportError:
        return []
    from ..spec import load_spec

    spec = load_spec(_specs_dir() / "titans-tiny.toml")
    dim = spec.model.config.dim
    block_spec = next(b for b in spec.model.config.blocks if b.type == "titans")
    import attrs

    cfg = attrs.evolve(block_spec.config, layout="standalone")  # the memory alone, like NeuralMemory
    heads, chunk = cfg.heads, cfg.chunk_size
    torch.manual_seed(0)
    ours = block_spec.cls(cfg, dim)
    theirs = NeuralMemory(dim=dim, chunk_size=chunk, heads=heads, dim_head=dim // heads)
    x = torch.nn.functional.rms_norm(torch.randn(batch, seq_len, dim), (dim,))

    def run(fn):
        def step():
            out = fn(x)
            y = out[0] if isinstance(out, tuple) else out
            y.float().pow(2).mean().backward()
        return step

    rows = []
    for label, fn in (("nlframe titans memory", ours), ("titans-pytorch NeuralMemory", theirs)):
        dt = _time(run(fn), repeats, warmup)
        rows.append({"model": f"{label} (dim {dim}, heads {heads}, chunk {chunk})",
                     "params": sum(p.numel() for p in fn.parameters()),
                     "tokens/s": batch * seq_len / dt, "ms/step": 1e3 * dt})
    rows.append({"model": "ratio nlframe / titans-pytorch", "params": "",
                 "tokens/s": rows[0]["tokens/s"] / rows[1]["tokens/s"], "ms/step": ""})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| model | params | tokens/s | ms/step |", "|---|---:|---:|---:|"]
    for r in rows:
        tps = r["tokens/s"]
        tps = f"{tps:,.0f}" if r["ms/step"] != "" else f"{tps:.1f}x"
        ms = f"{r['ms/step']:.1f}" if r["ms/step"] != "" else ""
        params = f"{r['params']:,}" if r["params"] != "" else ""
        lines.append(f"| {r['model']} | {params} | {tps} | {ms} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nlframe bench train", description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="tiny shapes, 1 repeat (smoke test)")
    p.add_argument("--models", nargs="*", default=list(SPECS))
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.seq_len, args.repeats, args.warmup = 2, 64, 1, 1
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch} x "
          f"{args.seq_len} tokens, median of {args.repeats}")
    rows = [model_tokens_per_s(m, args.batch, args.seq_len, args.repeats, args.warmup)
            for m in args.models]
    rows += titans_yardstick(args.batch, args.seq_len, args.repeats, args.warmup)
    print(format_table(rows))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
