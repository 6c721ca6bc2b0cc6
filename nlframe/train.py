"""The training loop: spec → model → outer optimizer over data, with logging and checkpoints.

The outer level trains the slow weights with an update-rule plugin through
:class:`nlframe.optim.Optimizer` (built by :func:`nlframe.optim.build_optimizers`);
inner levels write their fast weights inside the forward pass. A step draws
``batch_size × grad_accum`` rows, runs them as ``grad_accum`` micro-batches of
``batch_size`` rows under the ``precision`` autocast, and applies one optimizer
step to the summed gradients — the gradients of one ``batch_size × grad_accum``
batch. Data-parallel modes are in :mod:`nlframe.distributed`, the run directory
(lock, overwrite policy, metrics) in :mod:`nlframe.rundir`, checkpoints in
:mod:`nlframe.checkpoint`.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import attrs
import torch
from torch import nn

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .datasets import open_data
from .distributed import Distributed
from .losses import token_nll
from .rundir import RunDir
from .train_config import TrainConfig

__all__ = ["Trainer", "train", "lm_loss", "lr_factor", "TrainResult", "load_run", "Precision"]


def lm_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy ``−log p(target)`` over the positions where ``mask`` is set."""
    total, count = lm_loss_sum(logits, batch)
    return total / count


def lm_loss_sum(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ −log p(target), number of positions)`` over the positions where ``mask`` is set
    (the parts of :func:`lm_loss`, so micro-batches add up to the whole batch's mean)."""
    targets = batch["targets"]
    ce = token_nll(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
    mask = batch.get("mask")
    if mask is None:
        return ce.sum(), torch.tensor(float(ce.numel()), device=ce.device)
    m = mask.reshape(-1).to(ce.dtype)
    return (ce * m).sum(), m.sum().clamp_min(1.0)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then constant/cosine/linear decay
    to ``min_lr_ratio``."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape


@attrs.define
class TrainResult:
    out: Path
    step: int
    last_loss: float
    metrics: dict[str, float]
    interrupted: bool = False


class Precision:
    """``[train] precision``: ``fp32``, or autocast to ``bf16`` / ``fp16`` (the latter with
    a gradient scaler). The slow weights, their gradients and the optimizer state stay
    fp32; the blocks keep their fast state and inner-loop sums in fp32 (see
    ``docs/concepts.md``, "Mixed precision")."""

    DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

    def __init__(self, name: str, device: torch.device):
        if name not in self.DTYPES:
            raise ValueError(f"precision: expected one of {', '.join(self.DTYPES)}, got {name!r}")
        self.name, self.dtype, self.device_type = name, self.DTYPES[name], device.type
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        if self.scaler is not None:
            for o in optimizers:
                self.scaler.unscale_(o)

    def step(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        if self.scaler is None:
            for o in optimizers:
                o.step()
            return
        for o in optimizers:
            self.scaler.step(o)  # skipped when the gradients overflowed
        self.scaler.update()


class Trainer:
    """Train a model built from a spec. See :func:`train` for the arguments."""

    def __init__(self, spec: Any, out: str | Path, *, steps: int | None = None,
                 data: str | None = None, device: str | None = None, seed: int | None = None,
                 parallel: str | None = None, resume: bool = False, overwrite: bool = False,
                 overrides: Iterable[str] = (), progress: bool = True,
                 data_options: dict[str, Any] | None = None, echo: Callable[[str], None] = print):
        from .build import build
        from .spec import dump_spec, load_spec

        self.echo = echo
        self.progress = progress
        overrides = tuple(overrides)
        ckpt = None
        if resume:
            ckpt = load_checkpoint(out)
            spec = load_spec(ckpt["spec_toml"], overrides=overrides)
            if data_options is None:  # resume with the data options the run started with
                data_options = ckpt["trainer"].get("data_options")
        else:
            spec = load_spec(spec, overrides=overrides)
        flags = {k: v for k, v in dict(steps=steps, data=data, device=device, seed=seed,
                                       parallel=parallel).items() if v is not None}
        self.cfg: TrainConfig = attrs.evolve(spec.train, **flags)
        self.spec = attrs.evolve(spec, train=self.cfg)
        self.spec_toml = dump_spec(self.spec)
        if self.cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.cfg.device!r} requested but CUDA is not available")
        self.run_dir = RunDir(out)
        self.out = self.run_dir.path
        self.dist = Distributed.from_env(self.cfg.device, self.cfg.parallel)
        try:
            self._setup(ckpt, resume, overwrite, data_options, build)
        except BaseException:
            self.run_dir.close()
            self.dist.close(wait=False)  # the other ranks may not get this far
            raise

    def _setup(self, ckpt: dict[str, Any] | None, resume: bool, overwrite: bool,
               data_options: dict[str, Any] | None, build: Callable) -> None:
        if self.cfg.batch_size % self.dist.world:
            raise ValueError(f"batch_size {self.cfg.batch_size} is not divisible by the "
                             f"{self.dist.world} distributed processes")
        from .build import too_large

        message = too_large(self.spec)  # counted on the meta device: nothing allocated
        if message:
            raise ValueError(message)
        # the run directory is claimed before anything expensive happens
        self.run_dir.open(resume=resume, overwrite=overwrite, lock=self.dist.is_main)
        self.device = self.dist.device(self.cfg.device)
        self.precision = Precision(self.cfg.precision, self.device)
        torch.manual_seed(self.cfg.seed)
        random.seed(self.cfg.seed)
        self.model = build(self.spec)
        if ckpt is not None:
            _load_weights(self.model, ckpt)
        self.model.to(self.device)
        self.data_options = dict(data_options or {})
        self.data = open_data(self.cfg.data, **self.data_options)
        vocab = getattr(self.spec.model.config, "vocab_size", None)
        if vocab is not None and self.data.vocab_size > vocab:
            raise ValueError(f"vocabulary mismatch: data {self.cfg.data!r} has {self.data.vocab_size}"
                             f" tokens but the model's vocab_size is {vocab}; set "
                             f"model.vocab_size={self.data.vocab_size} (e.g. as an override "
                             f"after the spec: nlframe train SPEC model.vocab_size="
                             f"{self.data.vocab_size} ...)")
        self.forward = self.dist.wrap(self.model)
        if self.cfg.compile:
            self.forward = torch.compile(self.forward)
        from .optim import build_optimizers

        self.optimizers = build_optimizers(self.model, self.cfg)
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: lr_factor(s, self.cfg))
                           for o in self.optimizers]
        self.step = 0
        if ckpt is not None:
            self._restore(ckpt)

    # -- state ---------------------------------------------------------------
    def _restore(self, ckpt: dict[str, Any]) -> None:
        st = ckpt["trainer"]
        try:
            self.dist.load_optimizers(self.model, self.optimizers, st["optimizers"])
            for sched, sd in zip(self.schedulers, st["schedulers"], strict=True):
                sched.load_state_dict(sd)
            if self.precision.scaler is not None and st.get("scaler"):
                self.precision.scaler.load_state_dict(st["scaler"])
            torch.set_rng_state(st["rng"]["torch"])
            if self.device.type == "cuda" and st["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(st["rng"]["cuda"], self.device)
            version, internal, gauss = st["rng"]["python"]
            random.setstate((version, tuple(internal), gauss))
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"{ckpt['path']}: the trainer state does not fit this run "
                                  f"({type(exc).__name__}: {exc})") from None
        self.step = int(st["step"])

    def save(self) -> Path | None:
        """Checkpoint: every rank gathers the full state (a collective under FSDP),
        rank 0 writes it, every rank waits for it."""
        weights, optimizers = self.dist.full_state(self.model, self.optimizers)
        path = None
        if self.dist.is_main:
            state = {"step": self.step, "optimizers": optimizers,
                     "schedulers": [s.state_dict() for s in self.schedulers],
                     "scaler": self.precision.scaler.state_dict() if self.precision.scaler else {},
                     "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "cuda": (torch.cuda.get_rng_state(self.device)
                                      if self.device.type == "cuda" else None)},
                     "data_position": {"split": "train", "index": self.step},
                     "data_options": self.data_options, "world_size": self.dist.world}
            meta = {"step": self.step, "data": self.cfg.data, "nlframe_version": _version(),
                    "parameters": sum(p.numel() for p in weights.values())}
            described = getattr(self.data, "describe", dict)()
            if described:
                meta["data_source"] = described
            path = save_checkpoint(self.out, weights=weights, trainer_state=state,
                                   spec_toml=self.spec_toml, meta=meta)
        self.dist.barrier()
        return path

    def close(self) -> None:
        """Release the run directory and leave the distributed job."""
        self.run_dir.close()
        self.dist.close()

    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- loop ------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        try:
            return self.data.evaluate(self.model, device=self.device,
                                      batch_size=self.cfg.batch_size, seq_len=self.cfg.seq_len,
                                      batches=self.cfg.eval_batches, seed=self.cfg.seed)
        finally:
            self.model.train()

    def _micro_batches(self) -> list[dict[str, torch.Tensor]]:
        """This step's ``grad_accum`` micro-batches: this rank's rows of each
        ``batch_size``-row slice of a ``batch_size × grad_accum``-row batch."""
        cfg = self.cfg
        batch = self.data.batch("train", self.step, batch_size=cfg.batch_size * cfg.grad_accum,
                                seq_len=cfg.seq_len, seed=cfg.seed)
        out = []
        for i in range(cfg.grad_accum):
            rows = slice(i * cfg.batch_size, (i + 1) * cfg.batch_size)
            out.append({k: self.dist.shard(v[rows]).to(self.device) for k, v in batch.items()})
        return out

    def train_step(self) -> float:
        """One optimizer step (``grad_accum`` micro-batches); returns this rank's loss."""
        micro = self._micro_batches()
        count = max(1.0, sum(_positions(b) for b in micro))
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        total = 0.0
        for i, b in enumerate(micro):
            with self.dist.no_sync(self.forward, sync=i == len(micro) - 1):
                with self.precision.autocast():
                    logits, _ = self.forward(b["tokens"])
                part, _ = lm_loss_sum(logits, b)
                loss = part / count
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss is {loss.item()} at step {self.step}; "
                                             "lower the learning rate or enable grad_clip")
                self.precision.backward(loss)
            total += float(loss.detach())
        self.precision.unscale(self.optimizers)
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        if not torch.isfinite(norm) and self.precision.scaler is None:
            bad = [n for n, p in self.model.named_parameters()
                   if p.grad is not None and not torch.isfinite(_local(p.grad)).all()]
            raise FloatingPointError(
                f"non-finite gradients at step {self.step} (loss {total:.4g}) in "
                f"{len(bad)} parameters: {', '.join(bad[:6])}{' …' if len(bad) > 6 else ''}")
        self.precision.step(self.optimizers)
        for sched in self.schedulers:
            sched.step()
        self.step += 1
        return total

    def run(self, until: int | None = None) -> TrainResult:
        """Train to ``cfg.steps`` (or stop early after step ``until``, with a checkpoint:
        the run continues exactly with ``resume``)."""
        from tqdm.auto import tqdm

        from .tensorboard import RunWriter

        cfg = self.cfg
        main = self.dist.is_main
        writer = None
        if main:
            (self.out / "spec.toml").write_text(self.spec_toml)
            self.run_dir.truncate_metrics(self.step, warn=self.echo)
            writer = RunWriter(self.out / "tb", purge_step=self.step or None,
                               spec_toml=self.spec_toml, cfg=cfg)
        eval_everywhere = self.dist.world > 1 and self.dist.mode == "fsdp"  # sharded forward
        stop = {"now": False}

        def on_sigint(signum, frame):  # finish the step, checkpoint, exit cleanly
            if stop["now"]:
                raise KeyboardInterrupt
            stop["now"] = True

        old_handler = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (self.progress and main),
                   desc="train", unit="step", dynamic_ncols=True)
        last_loss, last_eval = float("nan"), {}
        step_tokens = cfg.batch_size * cfg.grad_accum * cfg.seq_len
        tokens, t0 = 0, time.perf_counter()
        self.model.train()
        try:
            end = cfg.steps if until is None else min(cfg.steps, until)
            while self.step < end and not stop["now"]:
                ts = time.perf_counter()
                loss = self.train_step()
                step_s = time.perf_counter() - ts
                last_loss = self.dist.mean(torch.tensor(loss)).item()
                tokens += step_tokens
                stop["now"] = self.dist.any(stop["now"])
                record: dict[str, float] = {}
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    dt = time.perf_counter() - t0
                    record.update({"train/loss": last_loss,
                                   "train/lr": self.optimizers[0].param_groups[0]["lr"],
                                   "perf/tokens_per_s": tokens / max(dt, 1e-9)})
                    record.update(_surprise(self.model))
                    tokens, t0 = 0, time.perf_counter()
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    if main or eval_everywhere:
                        last_eval = {f"eval/{k}": float(v) for k, v in self.evaluate().items()}
                        record.update(last_eval)
                if record and main:
                    writer.scalars(record, self.step)
                    self.run_dir.append_metrics({"step": self.step, **record})
                if self.step % cfg.checkpoint_every == 0 or self.step in (cfg.steps, end):
                    self.save()
                bar.set_postfix(loss=f"{last_loss:.3f}",
                                lr=f"{self.optimizers[0].param_groups[0]['lr']:.2e}",
                                tok_s=f"{step_tokens / max(step_s, 1e-9):.0f}")
                bar.update(1)
            if stop["now"]:
                self.save()
                if main:
                    self.echo(f"interrupted: checkpoint saved at step {self.step} in {self.out / 'checkpoint'}")
        finally:
            bar.close()
            if writer is not None:
                writer.close(last_eval)
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
        return TrainResult(out=self.out, step=self.step, last_loss=last_loss, metrics=last_eval,
                           interrupted=stop["now"])


def _positions(batch: dict[str, torch.Tensor]) -> float:
    """Number of positions a batch's loss averages over (its ``mask``, else all)."""
    mask = batch.get("mask")
    return float(mask.sum()) if mask is not None else float(batch["targets"].numel())


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (FSDP), or ``t``."""
    return t.to_local() if hasattr(t, "to_local") else t


def _surprise(model: nn.Module) -> dict[str, float]:
    fn = getattr(model, "surprise", None)
    if fn is None:
        return {}
    return {f"surprise/{name}": float(v) for name, v in fn().items()}


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _version() -> str:
    from . import __version__

    return __version__


def train(spec: Any, out: str | Path, **kwargs: Any) -> TrainResult:
    """Train ``spec`` (path, TOML text, dict or Spec) and write the run to ``out``.

    Keyword arguments override the spec's ``[train]`` table: ``steps``, ``data``,
    ``device``, ``seed``, ``parallel``; ``overrides`` are ``KEY.PATH=VALUE`` strings
    applied to the spec; ``resume=True`` continues from ``out/checkpoint`` exactly
    (same loss curve as an uninterrupted run); ``overwrite=True`` replaces a run
    already in ``out`` (refused otherwise).
    """
    with Trainer(spec, out, **kwargs) as trainer:
        return trainer.run()


def load_run(run_dir: str | Path, device: str = "cpu"):
    """``(model, spec, checkpoint)`` from a run directory: the weights and spec only
    (the trainer state is not read), loaded onto ``device``, in eval mode."""
    from .build import build
    from .spec import SpecError, load_spec

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    ckpt = load_checkpoint(run_dir, trainer=False)
    try:
        spec = load_spec(ckpt["spec_toml"])
    except SpecError as exc:
        raise CheckpointError(f"{ckpt['path'] / 'spec.toml'}: not a valid spec:\n{exc}") from None
    model = build(spec)
    _load_weights(model, ckpt)
    return model.to(device).eval(), spec, ckpt


def _load_weights(model: nn.Module, ckpt: dict[str, Any]) -> None:
    """Load checkpoint weights; any mismatch with the spec's model is a :class:`CheckpointError`."""
    try:
        missing, unexpected = model.load_state_dict(ckpt["weights"], strict=False)
    except RuntimeError as exc:  # shape mismatches
        detail = str(exc).split("\n\t", 1)[-1].splitlines()[0]
        raise CheckpointError(f"checkpoint {ckpt['path']} does not match its spec: {detail}") from None
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {ckpt['path']} does not match its spec: missing "
                              f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
