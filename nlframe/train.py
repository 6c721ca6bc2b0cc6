"""The training loop: spec → model → outer optimizer over data, with logging and checkpoints.

The outer level trains the slow weights with an update-rule plugin through
:class:`nlframe.optim.Optimizer`; inner levels write their fast weights inside
the forward pass. Parameters tagged ``param._nl_update_every = C`` (the CMS
"training frequency" regime) are stepped only every ``C`` optimizer steps, from
the gradients accumulated since their last step.
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
from pathlib import Path
from typing import Any, Callable

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .datasets import open_data
from .train_config import TrainConfig

__all__ = ["Trainer", "train", "lm_loss", "lr_factor", "TrainResult", "load_run"]


def lm_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy ``−log p(target)`` over the positions where ``mask`` is set."""
    targets = batch["targets"]
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                         reduction="none")
    mask = batch.get("mask")
    if mask is None:
        return ce.mean()
    m = mask.reshape(-1).to(ce.dtype)
    return (ce * m).sum() / m.sum().clamp_min(1.0)


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


def _param_groups(params: list[torch.Tensor], weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices, none on vectors (norm gains, biases)."""
    decay, no_decay = [], []
    for p in params:
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def _rule_takes(rule: Any, p: torch.Tensor) -> bool:
    """Whether ``rule`` accepts a parameter of ``p``'s shape (its ``init`` raises
    ``ValueError`` otherwise; probed on the meta device, allocating nothing)."""
    try:
        rule.init({"p": torch.empty_like(p, device="meta")})
    except ValueError:
        return False
    except Exception:  # noqa: BLE001 - rules that cannot init on "meta" are checked by the optimizer
        return True
    return True


def _make_optimizers(model: nn.Module, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """The outer optimizer(s): ``cfg.optimizer`` for the parameters it takes, and
    ``cfg.fallback_optimizer`` for the rest (e.g. vectors under ``muon``)."""
    from .optim import Optimizer
    from .registry import get_registry

    reg = get_registry()
    rule = reg.get("optimizer", cfg.optimizer)()
    params = [p for p in model.parameters() if p.requires_grad]
    taken = [p for p in params if _rule_takes(rule, p)]
    rest = [p for p in params if not any(p is q for q in taken)]
    optimizers = []
    for name, ps, extra in ((cfg.optimizer, taken, cfg.optimizer_kwargs),
                            (cfg.fallback_optimizer, rest, {})):
        if not ps:
            continue
        accepts_wd = "weight_decay" in getattr(reg.get("optimizer", name), "hyperparams", {})
        groups = _param_groups(ps, cfg.weight_decay) if accepts_wd else [{"params": ps}]
        optimizers.append(Optimizer(groups, rule=name, lr=cfg.lr, **extra))
    return optimizers


class _Slowdown:
    """Gradient accumulation for parameters stepped every ``C`` steps (CMS training frequency)."""

    def __init__(self, model: nn.Module):
        self.params = {n: p for n, p in model.named_parameters()
                       if getattr(p, "_nl_update_every", 1) > 1}
        self.acc: dict[str, torch.Tensor] = {}

    def before_step(self, step: int) -> None:
        """Accumulate; hand the sum to the optimizer only on the step it is due."""
        for n, p in self.params.items():
            every = p._nl_update_every
            if p.grad is not None:
                self.acc[n] = self.acc[n] + p.grad if n in self.acc else p.grad.clone()
            if (step + 1) % every == 0 and n in self.acc:
                p.grad = self.acc.pop(n)
            else:
                p.grad = None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.acc)

    def load_state_dict(self, d: dict[str, torch.Tensor]) -> None:
        self.acc = dict(d)


class Trainer:
    """Train a model built from a spec. See :func:`train` for the arguments."""

    def __init__(self, spec: Any, out: str | Path, *, steps: int | None = None,
                 data: str | None = None, device: str | None = None, seed: int | None = None,
                 resume: bool = False, progress: bool = True,
                 data_options: dict[str, Any] | None = None, echo: Callable[[str], None] = print):
        from .build import build
        from .spec import dump_spec, load_spec

        self.out = Path(out)
        self.echo = echo
        self.progress = progress
        self._ckpt = None
        if resume:
            self._ckpt = load_checkpoint(self.out)
            spec = load_spec(self._ckpt["spec_toml"])
            if data_options is None:  # resume with the data options the run started with
                data_options = self._ckpt["trainer"].get("data_options")
        else:
            spec = load_spec(spec)
        overrides = {k: v for k, v in dict(steps=steps, data=data, device=device, seed=seed).items()
                     if v is not None}
        self.cfg: TrainConfig = attrs.evolve(spec.train, **overrides)
        self.spec = attrs.evolve(spec, train=self.cfg)
        self.spec_toml = dump_spec(self.spec)
        if self.cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {self.cfg.device!r} requested but CUDA is not available")
        self.dist = _Distributed.from_env(self.cfg.device)
        self.device = self.dist.device(self.cfg.device)
        if self.cfg.batch_size % self.dist.world:
            raise ValueError(f"batch_size {self.cfg.batch_size} is not divisible by the "
                             f"{self.dist.world} distributed processes")
        torch.manual_seed(self.cfg.seed)
        random.seed(self.cfg.seed)
        self.model = build(self.spec).to(self.device)
        self.data_options = dict(data_options or {})
        self.data = open_data(self.cfg.data, **self.data_options)
        vocab = getattr(self.spec.model.config, "vocab_size", None)
        if vocab is not None and self.data.vocab_size > vocab:
            raise ValueError(f"vocabulary mismatch: data {self.cfg.data!r} has {self.data.vocab_size}"
                             f" tokens but the model's vocab_size is {vocab}")
        self.optimizers = _make_optimizers(self.model, self.cfg)
        self.forward = self.dist.wrap(self.model)
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: lr_factor(s, self.cfg))
                           for o in self.optimizers]
        self.slow = _Slowdown(self.model)
        self.step = 0
        if self._ckpt is not None:
            self._restore(self._ckpt)

    # -- state ---------------------------------------------------------------
    def trainer_state(self) -> dict[str, Any]:
        return {"step": self.step, "optimizers": [o.state_dict() for o in self.optimizers],
                "schedulers": [s.state_dict() for s in self.schedulers],
                "slow_grads": self.slow.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
                "data_position": {"split": "train", "index": self.step},
                "data_options": self.data_options}

    def _restore(self, ckpt: dict[str, Any]) -> None:
        _load_weights(self.model, ckpt)
        st = ckpt["trainer"]
        for obj, sd in [*zip(self.optimizers, st["optimizers"]), *zip(self.schedulers, st["schedulers"])]:
            obj.load_state_dict(sd)
        self.slow.load_state_dict(st["slow_grads"])
        torch.set_rng_state(st["rng"]["torch"])
        random.setstate(st["rng"]["python"])
        self.step = int(st["step"])

    def save(self) -> Path | None:
        """Checkpoint (rank 0 writes; every rank waits for it)."""
        if not self.dist.is_main:
            self.dist.barrier()
            return None
        meta = {"step": self.step, "data": self.cfg.data, "nlframe_version": _version(),
                "parameters": sum(p.numel() for p in self.model.parameters())}
        path = save_checkpoint(self.out, model=self.model, trainer_state=self.trainer_state(),
                               spec_toml=self.spec_toml, meta=meta)
        self.dist.barrier()
        return path

    # -- loop ------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        try:
            return self.data.evaluate(self.model, device=self.device,
                                      batch_size=self.cfg.batch_size, seq_len=self.cfg.seq_len,
                                      batches=self.cfg.eval_batches, seed=self.cfg.seed)
        finally:
            self.model.train()

    def run(self, until: int | None = None) -> TrainResult:
        """Train to ``cfg.steps`` (or stop early after step ``until``, with a checkpoint:
        the run continues exactly with ``resume``).
        """
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        cfg = self.cfg
        main = self.dist.is_main
        metrics_path = self.out / "metrics.jsonl"
        writer = None
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "spec.toml").write_text(self.spec_toml)
            _truncate_metrics(metrics_path, self.step)
            writer = SummaryWriter(str(self.out / "tb"), purge_step=self.step or None)
        stop = {"now": False}

        def on_sigint(signum, frame):  # finish the step, checkpoint, exit cleanly
            if stop["now"]:
                raise KeyboardInterrupt
            stop["now"] = True

        old_handler = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (self.progress and main),
                   desc="train", unit="step", dynamic_ncols=True)
        last_loss, last_eval = float("nan"), {}
        tokens, t0 = 0, time.perf_counter()
        self.model.train()
        try:
            end = cfg.steps if until is None else min(cfg.steps, until)
            while self.step < end and not stop["now"]:
                batch = self.data.batch("train", self.step, batch_size=cfg.batch_size,
                                        seq_len=cfg.seq_len, seed=cfg.seed)
                batch = {k: self.dist.shard(v).to(self.device) for k, v in batch.items()}
                logits, _ = self.forward(batch["tokens"])
                loss = lm_loss(logits, batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss is {loss.item()} at step {self.step}"
                                             "; lower the learning rate or enable grad_clip")
                for o in self.optimizers:
                    o.zero_grad(set_to_none=True)
                loss.backward()
                self.slow.before_step(self.step)
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                      cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
                if not torch.isfinite(norm):
                    bad = [n for n, p in self.model.named_parameters()
                           if p.grad is not None and not torch.isfinite(p.grad).all()]
                    raise FloatingPointError(
                        f"non-finite gradients at step {self.step} (loss {loss.item():.4g}) in "
                        f"{len(bad)} parameters: {', '.join(bad[:6])}{' …' if len(bad) > 6 else ''}")
                lr = self.optimizers[0].param_groups[0]["lr"]
                for o, sched in zip(self.optimizers, self.schedulers):
                    o.step()
                    sched.step()
                self.step += 1
                last_loss = self.dist.mean(loss.detach()).item()
                tokens += batch["tokens"].numel() * self.dist.world
                stop["now"] = self.dist.any(stop["now"])
                record: dict[str, float] = {}
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    dt = time.perf_counter() - t0
                    record.update({"train/loss": last_loss, "train/lr": lr,
                                   "perf/tokens_per_s": tokens / max(dt, 1e-9)})
                    record.update(_surprise(self.model))
                    tokens, t0 = 0, time.perf_counter()
                if (self.step % cfg.eval_every == 0 or self.step == cfg.steps) and main:
                    last_eval = {f"eval/{k}": float(v) for k, v in self.evaluate().items()}
                    record.update(last_eval)
                if record and main:
                    for k, v in record.items():
                        writer.add_scalar(k, v, self.step)
                    with open(metrics_path, "a") as fh:
                        fh.write(json.dumps({"step": self.step, **record}) + "\n")
                if self.step % cfg.checkpoint_every == 0 or self.step in (cfg.steps, end):
                    self.save()
                bar.set_postfix(loss=f"{last_loss:.3f}", lr=f"{lr:.2e}",
                                tok_s=f"{record.get('perf/tokens_per_s', 0):.0f}" if record else None)
                bar.update(1)
            if stop["now"]:
                self.save()
                if main:
                    self.echo(f"interrupted: checkpoint saved at step {self.step} in {self.out / 'checkpoint'}")
        finally:
            bar.close()
            if writer is not None:
                writer.close()
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
        return TrainResult(out=self.out, step=self.step, last_loss=last_loss, metrics=last_eval,
                           interrupted=stop["now"])


class _Distributed:
    """Data-parallel training under ``torchrun`` (DDP; gloo on CPU, NCCL on CUDA).

    ``batch_size`` is the global batch: every rank draws the same batch and
    trains on its slice of rows, so N processes compute the gradients of one
    process with the whole batch (up to float summation order).
    """

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0):
        self.rank, self.world, self.local_rank = rank, world, local_rank

    @classmethod
    def from_env(cls, device: str) -> "_Distributed":
        import os

        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        return cls(dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, name: str) -> torch.device:
        if name.startswith("cuda") and self.world > 1:
            return torch.device("cuda", self.local_rank)
        return torch.device(name)

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if next(model.parameters()).is_cuda else None
        return DistributedDataParallel(model, device_ids=ids)

    def shard(self, t: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return t
        rows = t.shape[0] // self.world
        return t[self.rank * rows:(self.rank + 1) * rows]

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return t
        import torch.distributed as dist

        t = t.clone()
        dist.all_reduce(t)
        return t / self.world

    def any(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor([float(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def _surprise(model: nn.Module) -> dict[str, float]:
    fn = getattr(model, "surprise", None)
    if fn is None:
        return {}
    return {f"memory/{name}/surprise": float(v) for name, v in fn().items()}


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop records after ``step`` (written after the checkpoint a resume starts from)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in keep))


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _version() -> str:
    from . import __version__

    return __version__


def train(spec: Any, out: str | Path, **kwargs: Any) -> TrainResult:
    """Train ``spec`` (path, TOML text, dict or Spec) and write the run to ``out``.

    Keyword arguments override the spec's ``[train]`` table: ``steps``, ``data``,
    ``device``, ``seed``; ``resume=True`` continues from ``out/checkpoint``
    exactly (same loss curve as an uninterrupted run).
    """
    return Trainer(spec, out, **kwargs).run()


def load_run(run_dir: str | Path, device: str = "cpu"):
    """``(model, spec, checkpoint)`` from a run directory, weights loaded, in eval mode."""
    from .build import build
    from .spec import load_spec

    ckpt = load_checkpoint(run_dir)
    spec = load_spec(ckpt["spec_toml"])
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
