"""Data-parallel training on ``torch.distributed``: DDP or FSDP2 under ``torchrun``.

Every rank draws the same global batch and trains on its slice of rows
(:meth:`Distributed.shard`), so N processes compute the gradients of one
process with the whole batch (up to float summation order). What is
synchronised: the gradients of the slow weights (all-reduced by DDP,
reduce-scattered by FSDP), the loss logged and the stop flag. What is not: the
fast state — each sequence's memories live and learn inside its own forward
pass on its own rank and are never all-reduced.

Checkpoints hold full (unsharded) state dicts, gathered through
:mod:`torch.distributed.checkpoint.state_dict` and written by rank 0 as
safetensors + JSON, so a run resumes on any number of ranks, in either mode.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any, Iterator, NoReturn

import torch
from torch import nn

__all__ = ["Distributed", "PARALLEL_MODES", "exit_worker"]

PARALLEL_MODES = ("ddp", "fsdp")


class Distributed:
    """This process's place in a data-parallel job (``world == 1``: none)."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, mode: str = "ddp",
                 owns_group: bool = False):
        if mode not in PARALLEL_MODES:
            raise ValueError(f"parallel: expected one of {', '.join(PARALLEL_MODES)}, got {mode!r}")
        self.rank, self.world, self.local_rank, self.mode = rank, world, local_rank, mode
        self._owns_group = owns_group

    @classmethod
    def from_env(cls, device: str, mode: str = "ddp") -> "Distributed":
        """From torchrun's ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` (gloo on CPU, NCCL on CUDA)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(mode=mode)
        import torch.distributed as dist

        if not dist.is_available():
            raise ValueError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise ValueError(f"device {device!r} requested but CUDA is not available")
            if local_rank >= torch.cuda.device_count():
                raise ValueError(f"local rank {local_rank} has no GPU: this machine has "
                                 f"{torch.cuda.device_count()}; start at most that many "
                                 "processes per node (torchrun --nproc_per_node)")
        elif device != "cpu":
            raise ValueError(f"distributed training runs on cpu (gloo) or cuda (NCCL), not on "
                             f"{device!r}")
        owns = not dist.is_initialized()
        if owns:
            dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
        return cls(dist.get_rank(), world, local_rank, mode, owns)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, name: str) -> torch.device:
        if name.startswith("cuda") and self.world > 1:
            return torch.device("cuda", self.local_rank)
        return torch.device(name)

    # -- the model ----------------------------------------------------------------------
    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to call for the forward pass: ``model`` itself, a DDP wrapper,
        or ``model`` sharded in place by FSDP2 (each of ``model.blocks``, then the root)."""
        if self.world == 1:
            return model
        if self.mode == "fsdp":
            from torch.distributed.fsdp import fully_shard

            for block in getattr(model, "blocks", ()):
                fully_shard(block)
            fully_shard(model)
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if next(model.parameters()).is_cuda else None
        return DistributedDataParallel(model, device_ids=ids)

    @contextlib.contextmanager
    def no_sync(self, forward: nn.Module, sync: bool) -> Iterator[None]:
        """Skip the gradient synchronisation of a micro-batch (``sync=False``)
        whose gradients are accumulated locally before the last one."""
        if self.world == 1 or sync:
            yield
        elif self.mode == "fsdp":
            forward.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                forward.set_requires_gradient_sync(True)
        else:
            with forward.no_sync():
                yield

    def full_state(self, model: nn.Module, optimizers: list[torch.optim.Optimizer]
                   ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Unsharded model and optimizer state dicts (parameter names as keys), on CPU.

        A collective under FSDP: every rank calls it; rank 0 receives the data.
        """
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             get_model_state_dict,
                                                             get_optimizer_state_dict)

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return (get_model_state_dict(model, options=opts),
                get_optimizer_state_dict(model, optimizers, options=opts))

    def load_optimizers(self, model: nn.Module, optimizers: list[torch.optim.Optimizer],
                        state: dict[str, Any]) -> None:
        """Load a full optimizer state dict (from :meth:`full_state`, any world size)."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             set_optimizer_state_dict)

        for o in optimizers:  # a complete local state to load into (no dummy step)
            init = getattr(o, "init_state", None)
            if init is not None:
                init()
        set_optimizer_state_dict(model, optimizers, state,
                                 options=StateDictOptions(full_state_dict=True))

    # -- collectives --------------------------------------------------------------------
    def shard(self, t: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch."""
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

    def close(self, wait: bool = True) -> None:
        """Leave the job: wait for every rank (when ``wait``), then destroy the process
        group this object created (exiting with it alive can abort gloo's threads)."""
        if self.world > 1 and self._owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                if wait:
                    dist.barrier()
                dist.destroy_process_group()
            self._owns_group = False


def exit_worker(code: int = 0) -> NoReturn:
    """End a ``torchrun`` worker whose job is over (:meth:`Distributed.close` done,
    every file closed) without interpreter finalization: flush stdio and logging,
    then ``os._exit(code)``.

    A gloo worker that exits normally tears the process group's C++ threads down
    while the interpreter finalizes; now and then (about one run in a few hundred on
    2 CPU cores) that aborts with ``terminate called without an active exception``
    after a run that finished, so torchrun reports a failed job. Nothing is left to
    finalize at this point, so the worker skips that phase.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(code)
