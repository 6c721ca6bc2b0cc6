"""Head to head: nlframe's HOPE vs ``nested-learning`` and its Titans memory vs ``titans-pytorch``.

Times one training step — forward + loss + backward + AdamW step (+ each
library's own in-context write pass) — of each side at equal sizes, in one
process, interleaved (A, B, A, B, …; medians), and measures each side's peak
RSS in a fresh subprocess of its own, first: a side that fails there (out of
memory under ``--memory-cap-mb``, killed, error) is reported and that shape is
not timed in-process. Denormal floats are flushed to zero on both sides
(``--keep-denormals`` to keep them). Prints parameter counts and a table of
ratios nlframe / peer (tokens/s: > 1 means nlframe is faster; RSS: > 1 means
nlframe uses more memory). Not imported by the package or the tests.

The peers are never dependencies of nlframe: install them in a separate venv,
pinning torch (an unpinned ``torch`` pulls a multi-GB CUDA build)::

    python -m venv /tmp/peers
    /tmp/peers/bin/pip install torch==2.13.0 nested-learning==0.2.0 titans-pytorch==0.5.5
    /tmp/peers/bin/pip install -e /path/to/nlframe
    /tmp/peers/bin/python benchmarks/head_to_head.py --seq-len 128 512

A pair whose peer is not importable is skipped with a note.

Pairs (B=2 by default; ``--seq-len`` lists the T's):

``hope``
    nlframe: ``lm`` with 2 ``hope`` blocks (self-modifying Titans + CMS), dim 256,
    4 heads, main memory and projection memories written every 8 tokens,
    CMS levels every 1/4/32/128 tokens with MLP hidden 1024 (the TOML below).
    Step: ``model(tokens)`` → :func:`nlframe.train.lm_loss` → backward →
    gradient clipping at 1 → AdamW. The in-context writes happen inside the
    forward, and the outer gradient flows through them.

    nested-learning 0.2.0: ``HOPEModel`` with ``block_variant="hope_selfmod"``
    (the paper's HOPE block: self-modifying Titans followed by CMS), dim 256,
    2 layers, ``self_mod_chunk_size = self_mod_chunk_size_memory = 8``, CMS
    ``LevelSpec`` update periods 1/4/32/128 (hidden multiplier 4 → 1024),
    ``teach_scale=0.1``, ``teach_clip=5`` as in its ``pilot`` config, no
    surprise gate (every level updates when due). Step: its default
    "two-pass" learning step (``train.algorithm_mode =
    two_pass_stopgrad_updates`` with ``per_layer_teach_signal``, no
    ``online_updates``): pass 1 ``forward_with_block_outputs`` → next-token
    cross-entropy → per-block teach signals ``∂loss/∂block output`` →
    backward → clipping at 1 → AdamW; pass 2, under ``no_grad``, the forward
    again with the teach signals, which writes the self-modifying memories
    (chunks of 8) and the CMS levels in place. Its writes are stop-gradient.

    Both sides share one vocabulary (``--vocab``, default 15000: both ≈10M
    parameters, printed) and see the same random tokens.

``titans-default``
    the same at titans-pytorch's default memory size for dim 256: 4 heads of 256, a
    2-layer MLP memory 256 → 1024 → 256 per head, chunk size 16, momentum and decay.

``titans``
    nlframe's ``titans`` block, standalone layout (the memory alone), vs
    ``titans_pytorch.NeuralMemory``: dim 256, 4 heads of 64, chunk size 8, a
    2-layer MLP memory of hidden 256 (NeuralMemory's default expansion 4),
    momentum on. Input: RMS-normalised random ``(B, T, 256)``; loss: MSE to a
    fixed random target; backward; AdamW.

Peak memory: the peak RSS of a subprocess that builds one side and runs
``--memory-steps`` steps, and its increase over the peak just after building
(``VmHWM`` on Linux: there ``getrusage(RUSAGE_SELF).ru_maxrss`` of an exec'd
child starts at its parent's peak, which here holds both models). Thread count, torch version and the load average are printed;
other load on the machine hits both sides alike thanks to the interleaving,
but a loaded machine still widens the spread.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from nlframe.bench.model import peak_rss_mb
from nlframe.bench.scan import load_average

DIM, HEADS, LAYERS, CHUNK = 256, 4, 2, 8
CMS_PERIODS, CMS_HIDDEN = (1, 4, 32, 128), 1024
LR = 1e-3

INNER_GRAD = "full"  # --inner-grad
BACKEND = "auto"  # --backend: the scan backend of nlframe's sides
NLFRAME_HOPE_TOML = """
description = "head-to-head HOPE: 2 blocks, dim 256, 4 heads, main memory chunk 8, CMS 1/4/32/128"

[model]
type = "lm"
vocab_size = {vocab}
dim = 256
tie_embeddings = true

[[model.blocks]]
type = "hope"
repeat = 2

[model.blocks.titans]
heads = 4
chunk_size = 8                                     # main memory: written every 8 tokens
proj_chunk_size = 8                                # M_k, M_v, M_eta, M_alpha: every 8 tokens
memory = {{ type = "residual-mlp", hidden = 64 }}     # per head 64 -> 64 -> 64
proj_memory = {{ type = "residual-mlp", hidden = 256 }}  # dim -> 256 -> dim, like the peer's
inner_grad = "{inner_grad}"
backend = "{backend}"

[model.blocks.cms]
variant = "sequential"
chunk_sizes = [1, 4, 32, 128]
memory = {{ type = "mlp", hidden = 1024 }}
inner_grad = "{inner_grad}"
backend = "{backend}"

[train]
lr = 1e-3
"""

NLFRAME_TITANS_TOML = """
[model]
type = "lm"
vocab_size = 256
dim = 256

[[model.blocks]]
type = "titans"
layout = "standalone"
heads = 4
head_dim = {head_dim}
chunk_size = {chunk}
memory = {{ type = "mlp", hidden = {hidden} }}
momentum = true
backend = "{backend}"
"""
TITANS_SIZES = {"titans": dict(head_dim=64, chunk=8, hidden=256),
                "titans-default": dict(head_dim=256, chunk=16, hidden=1024)}

PAIRS = {"hope": ("nlframe HOPE", "nested-learning HOPE"),
         "titans": ("nlframe titans memory", "titans-pytorch NeuralMemory"),
         "titans-default": ("nlframe titans memory, default size",
                            "titans-pytorch NeuralMemory, default size")}
PEER_MODULE = {"hope": "nested_learning", "titans": "titans_pytorch",
               "titans-default": "titans_pytorch"}
PEER_DIST = {"hope": "nested-learning", "titans": "titans-pytorch",
             "titans-default": "titans-pytorch"}


# -- sides: build(args) -> (module, step(data), make_data(B, T)) ---------------------------
def _tokens(vocab: int, B: int, T: int) -> torch.Tensor:
    return torch.randint(0, vocab, (B, T + 1), generator=torch.Generator().manual_seed(0))


def build_nlframe_hope(vocab: int):
    import nlframe
    from nlframe.train import lm_loss

    model = nlframe.build(NLFRAME_HOPE_TOML.format(vocab=vocab, inner_grad=INNER_GRAD,
                                                   backend=BACKEND), seed=0)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR)

    def data(B: int, T: int):
        t = _tokens(vocab, B, T)
        return {"tokens": t[:, :-1], "targets": t[:, 1:]}

    def step(batch) -> float:
        logits, _ = model(batch["tokens"])
        loss = lm_loss(logits, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss.detach())

    return model, step, data


def build_peer_hope(vocab: int):
    from nested_learning.levels import LevelSpec
    from nested_learning.model import HOPEModel, ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=vocab, dim=DIM, num_layers=LAYERS, heads=HEADS,
        titan_level=LevelSpec(name="titan", update_period=CHUNK),  # unused by hope_selfmod
        cms_levels=[LevelSpec(name=f"cms_{p}", update_period=p) for p in CMS_PERIODS],
        block_variant="hope_selfmod", self_mod_chunk_size=CHUNK,
        self_mod_chunk_size_memory=CHUNK, teach_scale=0.1, teach_clip=5.0)
    model = HOPEModel(cfg)
    assert all(b.config.cms_hidden_multiplier * DIM == CMS_HIDDEN for b in model.blocks)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR)

    def data(B: int, T: int):
        return _tokens(vocab, B, T)[:, :-1]  # the peer predicts tokens[:, 1:] from tokens[:, :-1]

    def step(tokens) -> float:
        # pass 1: outer loss, per-block teach signals, backward, optimizer step
        logits, _pre, block_outputs = model.forward_with_block_outputs(tokens)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                               tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        signals = [g.detach() for g in torch.autograd.grad(loss, block_outputs, retain_graph=True)]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        # pass 2: the in-context writes (self-modifying memories, CMS levels), stop-gradient
        with torch.no_grad():
            model(tokens, teach_signals=signals)
        return float(loss.detach())

    return model, step, data


def _memory_step(module, opt, out_of: Callable):
    def step(batch) -> float:
        x, target = batch
        y = out_of(module(x))
        loss = F.mse_loss(y, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())
    return step


def _memory_data(B: int, T: int):
    g = torch.Generator().manual_seed(0)
    x = F.rms_norm(torch.randn(B, T, DIM, generator=g), (DIM,))
    return x, torch.randn(B, T, DIM, generator=g)


def build_nlframe_titans(vocab: int, size: str = "titans"):
    import nlframe
    from nlframe.build import build_block

    spec = nlframe.load_spec(NLFRAME_TITANS_TOML.format(backend=BACKEND, **TITANS_SIZES[size]))
    torch.manual_seed(0)
    block = build_block(spec.model.config.blocks[0], DIM)
    opt = torch.optim.AdamW(block.parameters(), lr=LR)
    return block, _memory_step(block, opt, lambda out: out[0]), _memory_data


def build_peer_titans(vocab: int, chunk: int = CHUNK, dim_head: int = DIM // HEADS):
    from titans_pytorch import NeuralMemory

    torch.manual_seed(0)
    mem = NeuralMemory(dim=DIM, chunk_size=chunk, heads=HEADS, dim_head=dim_head,
                       momentum=True, default_model_kwargs={"depth": 2, "expansion_factor": 4.0})
    # titans-pytorch 0.5.5 stores the per-head initial memory weights as stride-0 broadcasts
    # of one tensor, which torch.optim's in-place updates on CPU refuse ("more than one element
    # of the written-to tensor refers to a single memory location"): give each head its own
    # storage (what per_head_learned_parameters=True means) so the optimizer can step them.
    for prm in mem.parameters():
        if 0 in prm.stride():
            prm.data = prm.data.contiguous()
    opt = torch.optim.AdamW(mem.parameters(), lr=LR)
    return mem, _memory_step(mem, opt, lambda out: out[0] if isinstance(out, tuple) else out), \
        _memory_data


BUILDERS = {"nlframe HOPE": build_nlframe_hope, "nested-learning HOPE": build_peer_hope,
            "nlframe titans memory": build_nlframe_titans,
            "titans-pytorch NeuralMemory": build_peer_titans,
            "nlframe titans memory, default size":
                lambda vocab: build_nlframe_titans(vocab, "titans-default"),
            "titans-pytorch NeuralMemory, default size":
                lambda vocab: build_peer_titans(vocab, chunk=16, dim_head=DIM)}


# -- measurement ------------------------------------------------------------------------
def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())  # tied weights once


def interleaved(steps: dict[str, Callable[[], object]], repeats: int,
                budget_s: float, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each timed call, in rounds A, B, A, B, … after ``warmup`` untimed calls
    each; stops after the round that passes ``budget_s`` (at least one round)."""
    warmup = max(1, warmup)
    for name, fn in steps.items():
        t0 = time.perf_counter()
        for _ in range(warmup):
            fn()
        print(f"  warm-up {name} ({warmup}×): {time.perf_counter() - t0:.2f} s", flush=True)
    times: dict[str, list[float]] = {n: [] for n in steps}
    start = time.perf_counter()
    for r in range(repeats):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        print("  round " + str(r + 1) + ": " + ", ".join(f"{n} {ts[-1]:.2f} s"
                                                       for n, ts in times.items()), flush=True)
        if time.perf_counter() - start > budget_s and r + 1 < repeats:
            print(f"  (stopping after {r + 1} round(s): --budget-s {budget_s:g} passed)")
            break
    return times


def _mem_total_mb() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**10
    except (OSError, ValueError, IndexError):
        pass
    return None


def _status(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, MemoryError) or "can't allocate memory" in text or "out of memory" in text:
        return "OOM"
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"error: {type(exc).__name__}: {first[:150]}"


def worker(side: str, B: int, T: int, vocab: int, steps: int, cap_mb: float | None) -> int:
    """Build ``side``, run ``steps`` training steps, print one JSON line of its peak RSS.
    ``cap_mb`` caps the address space so that a shape too big for the machine fails here
    with an allocation error instead of waking the OOM killer."""
    if cap_mb:
        resource.setrlimit(resource.RLIMIT_AS, (int(cap_mb * 2**20),
                                                resource.getrlimit(resource.RLIMIT_AS)[1]))
    rec: dict = {"side": side}
    try:
        model, step, data = BUILDERS[side](vocab)
        batch = data(B, T)
        rec.update(params=n_params(model), build_rss_mb=peak_rss_mb())
        for _ in range(steps):
            step(batch)
        rec["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        rec["status"] = _status(exc)
    rec["peak_rss_mb"] = peak_rss_mb()
    if "build_rss_mb" in rec:
        rec["peak_rss_delta_mb"] = rec["peak_rss_mb"] - rec["build_rss_mb"]
    print("H2H_RESULT " + json.dumps(rec), flush=True)
    return 0


def measure_memory(side: str, args, T: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", side, "--seq-len", str(T),
           "--batch-size", str(args.batch_size), "--vocab", str(args.vocab),
           "--memory-steps", str(args.memory_steps), "--threads", str(torch.get_num_threads()),
           "--memory-cap-mb", str(args.memory_cap_mb or 0), "--inner-grad", args.inner_grad,
           "--backend", args.backend]
    if args.keep_denormals:
        cmd.append("--keep-denormals")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.memory_timeout,
                           check=False)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {args.memory_timeout:g} s"}
    for line in p.stdout.splitlines():
        if line.startswith("H2H_RESULT "):
            return json.loads(line[len("H2H_RESULT "):])
    if p.returncode in (-9, 137):
        return {"status": "killed (out of memory?)"}
    tail = [s for s in p.stderr.splitlines() if s.strip()]
    return {"status": f"error: {tail[-1][:150] if tail else f'exit status {p.returncode}'}"}


def _f(x, spec=",.0f") -> str:
    return "—" if x is None else format(x, spec)


def _peak(mem: dict) -> str:
    """Peak RSS of a memory record; ``≥`` where the run stopped early (OOM, error)."""
    x = mem.get("peak_rss_mb")
    return "—" if x is None else ("" if mem.get("status") == "ok" else "≥") + f"{x:,.1f}"


def _ratio(a, b) -> str:
    return f"{a / b:.2f}×" if a and b else "—"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=15000,
                    help="shared vocabulary of the two HOPE models (default 15000: ≈10M each)")
    ap.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=["hope", "titans"])
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per shape (median)")
    ap.add_argument("--warmup", type=int, default=3,
                    help="untimed steps of each side before the rounds (nlframe's first steps "
                         "are slower while the allocator's heap grows to its working set)")
    ap.add_argument("--budget-s", type=float, default=120.0,
                    help="stop adding timed rounds to a shape after this many seconds")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--keep-denormals", action="store_true",
                    help="do not flush denormal floats to zero (default: flush, on both sides)")
    ap.add_argument("--no-memory", action="store_true",
                    help="skip the peak-RSS subprocesses (and so their check that a shape fits)")
    ap.add_argument("--memory-steps", type=int, default=2,
                    help="training steps in each peak-RSS subprocess (default 2)")
    ap.add_argument("--memory-timeout", type=float, default=600.0)
    total = _mem_total_mb()
    ap.add_argument("--memory-cap-mb", type=float,
                    default=round(0.6 * total) if total else None,
                    help="address-space cap of each peak-RSS subprocess (default 60%% of RAM); "
                         "a side that fails under it is reported and not timed in-process. 0: none")
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    ap.add_argument("--inner-grad", choices=("full", "truncated"), default="full",
                    help="nlframe HOPE's inner_grad (titans and cms): the outer gradient through "
                         "every write, or stopped at each chunk's write")
    ap.add_argument("--backend", default="auto",
                    help="scan backend of nlframe's sides (auto, chunked, compiled, ...)")
    ap.add_argument("--worker", choices=sorted(BUILDERS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    global INNER_GRAD, BACKEND
    INNER_GRAD, BACKEND = args.inner_grad, args.backend
    if args.threads:
        torch.set_num_threads(args.threads)
    # Subnormal floats cost ~100x on CPUs; nested-learning's in-place writes produce them at
    # these sizes (its steps took 6-165 s at T=128 without this, 3-10 s with it).
    torch.set_flush_denormal(not args.keep_denormals)
    # the fixed glibc mmap threshold that `nlframe train` sets, for both sides alike
    from nlframe.runtime import fix_mmap_threshold

    fix_mmap_threshold()
    if args.worker:
        return worker(args.worker, args.batch_size, args.seq_len[0], args.vocab,
                      args.memory_steps, args.memory_cap_mb)

    print(f"# head to head: torch {torch.__version__}, {torch.get_num_threads()} threads "
          f"({os.cpu_count()} CPUs), load average {load_average()}, python "
          f"{platform.python_version()} ({sys.executable})")
    print(f"# nlframe {_version('nlframe')} (inner_grad {INNER_GRAD}, backend {BACKEND}), nested-learning "
          f"{_version('nested-learning')}, "
          f"titans-pytorch {_version('titans-pytorch')}; B={args.batch_size}, "
          f"T={' '.join(map(str, args.seq_len))}, median of ≤{args.repeats} interleaved rounds "
          f"after {args.warmup} warm-up step(s) each; denormals {'kept' if args.keep_denormals else 'flushed'}; "
          f"memory: {'not measured' if args.no_memory else 'a subprocess per side and T'}")
    rows = []
    for pair in args.pairs:
        ours, theirs = PAIRS[pair]
        try:
            __import__(PEER_MODULE[pair])
        except ImportError as exc:
            print(f"\n## {pair}: skipped, {PEER_DIST[pair]} is not importable ({exc}); see the "
                  "docstring for the separate venv")
            continue
        print(f"\n## {pair}: {ours} vs {theirs}", flush=True)
        built = {side: BUILDERS[side](args.vocab) for side in (ours, theirs)}
        params = {side: n_params(m) for side, (m, _, _) in built.items()}
        for side in (ours, theirs):
            print(f"  {side}: {params[side]:,} parameters")
        for T in args.seq_len:
            print(f"  T={T}:", flush=True)
            # memory first, in subprocesses: a shape that does not fit is not run in-process
            mem = {s: ({} if args.no_memory else measure_memory(s, args, T)) for s in (ours, theirs)}
            for s in (ours, theirs):
                if mem[s]:
                    print(f"  {s}: peak RSS {_f(mem[s].get('peak_rss_mb'), ',.1f')} MB "
                          f"(+{_f(mem[s].get('peak_rss_delta_mb'), ',.1f')} over built), "
                          f"{mem[s].get('status')}", flush=True)
            row = {"pair": pair, "batch_size": args.batch_size, "seq_len": T, "nlframe": ours,
                   "peer": theirs, "nlframe_params": params[ours], "peer_params": params[theirs],
                   "nlframe_tok_s": None, "peer_tok_s": None, "nlframe_step_s": [],
                   "peer_step_s": [], "nlframe_mem": mem[ours], "peer_mem": mem[theirs],
                   "status": "ok"}
            failed = [s for s in (ours, theirs) if mem[s].get("status", "ok") != "ok"]
            if failed:
                row["status"] = "; ".join(f"{s}: {mem[s]['status']}" for s in failed)
                print(f"  not timed: {row['status']}")
            else:
                batches = {side: data(args.batch_size, T) for side, (_, _, data) in built.items()}
                steps = {side: (lambda st=st, b=batches[side]: st(b))
                         for side, (_, st, _) in built.items()}
                try:
                    times = interleaved(steps, args.repeats, args.budget_s, args.warmup)
                except Exception as exc:  # noqa: BLE001 - one row fails, the others still run
                    row["status"] = _status(exc)
                    print(f"  timing failed: {row['status']}")
                else:
                    row.update(nlframe_step_s=times[ours], peer_step_s=times[theirs],
                               nlframe_tok_s=args.batch_size * T / statistics.median(times[ours]),
                               peer_tok_s=args.batch_size * T / statistics.median(times[theirs]))
                del batches, steps
            rows.append(row)
        del built
    if not rows:
        print("nothing measured")
        return 1
    print("\n| pair | B | T | nlframe params | peer params | nlframe tok/s | peer tok/s "
          "| tok/s nlframe/peer | nlframe peak RSS MB | peer peak RSS MB | RSS nlframe/peer "
          "| Δ RSS over built, nlframe / peer MB | status |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        a, b = r["nlframe_mem"], r["peer_mem"]
        print(f"| {r['pair']} | {r['batch_size']} | {r['seq_len']} | {r['nlframe_params']:,} "
              f"| {r['peer_params']:,} | {_f(r['nlframe_tok_s'], ',.1f')} "
              f"| {_f(r['peer_tok_s'], ',.1f')} | {_ratio(r['nlframe_tok_s'], r['peer_tok_s'])} "
              f"| {_peak(a)} | {_peak(b)} "
              f"| {_ratio(a.get('peak_rss_mb'), b.get('peak_rss_mb'))} "
              f"| {_f(a.get('peak_rss_delta_mb'), ',.1f')} / {_f(b.get('peak_rss_delta_mb'), ',.1f')} "
              f"| {r['status']} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
