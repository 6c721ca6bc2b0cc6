"""The ``[train]`` table of a spec: defaults for ``nlframe train`` (flags override).

Validated by the same schema machinery as the model (:mod:`nlframe.spec`):
every key, type and value at ``train.<key>``; plugin names against the registry;
``optimizer_kwargs`` against the optimizer's hyperparameters
(:meth:`TrainConfig.check`).
"""

from __future__ import annotations

from typing import Any

import attrs

from .spec.validators import (all_finite, matches, non_negative, one_of, plugin_name,
                              positive_int)

__all__ = ["TrainConfig", "DEVICE_PATTERN"]

DEVICE_PATTERN = r"cpu|cuda(:\d+)?|mps"
"""Accepted ``device`` values: ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""


@attrs.frozen(kw_only=True)
class TrainConfig:
    """Training defaults.

    ``optimizer`` names an optimizer (update-rule) plugin driving
    :class:`nlframe.optim.Optimizer`; ``optimizer_kwargs`` are its extra
    hyperparameters. Parameters the rule does not take (e.g. vectors under
    ``muon``, which orthogonalises matrices) are trained by ``fallback_optimizer``.
    The learning rate follows ``schedule`` (``constant``, ``cosine`` or ``linear``
    decay to ``min_lr_ratio·lr``) after ``warmup_steps`` of linear warm-up.
    """

    data: str = attrs.field(default="stdlib", validator=plugin_name("data", argument=True))
    """A data plugin; ``name:ARG`` passes ``ARG`` to it (``text:PATH``)."""
    steps: int = attrs.field(default=300, validator=positive_int)
    batch_size: int = attrs.field(default=8, validator=positive_int)
    """Sequences per micro-batch (split across the ranks under torchrun)."""
    seq_len: int = attrs.field(default=128, validator=positive_int)
    optimizer: str = attrs.field(default="adamw", validator=plugin_name("optimizer"))
    optimizer_kwargs: dict[str, Any] = attrs.field(factory=dict, validator=all_finite)
    """Further hyperparameters of ``optimizer`` (``lr`` and ``weight_decay`` are set
    by the keys of those names)."""
    fallback_optimizer: str = attrs.field(default="adamw", validator=plugin_name("optimizer"))
    lr: float = attrs.field(default=3e-3, validator=non_negative)
    weight_decay: float = attrs.field(default=0.1, validator=non_negative)
    schedule: str = attrs.field(default="cosine", validator=one_of("constant", "cosine", "linear"))
    warmup_steps: int = attrs.field(default=20, validator=non_negative)
    min_lr_ratio: float = attrs.field(default=0.1, validator=non_negative)
    grad_clip: float = attrs.field(default=1.0, validator=non_negative)
    """Clip the global gradient norm to this; 0: off."""
    eval_every: int = attrs.field(default=100, validator=positive_int)
    eval_batches: int = attrs.field(default=8, validator=positive_int)
    checkpoint_every: int = attrs.field(default=100, validator=positive_int)
    log_every: int = attrs.field(default=10, validator=positive_int)
    seed: int = 0
    device: str = attrs.field(default="cpu", validator=matches(
        DEVICE_PATTERN, "a device: cpu, cuda, cuda:N or mps"))
    precision: str = attrs.field(default="fp32", validator=one_of("fp32", "bf16", "fp16"))
    """Compute precision of the forward and backward passes; parameters and
    optimizer state stay fp32."""
    grad_accum: int = attrs.field(default=1, validator=positive_int)
    """Micro-batches of ``batch_size`` sequences whose gradients are summed into one
    optimizer step (``batch_size × grad_accum`` sequences per step)."""
    compile: bool = False
    """Run the model through ``torch.compile``."""
    parallel: str = attrs.field(default="ddp", validator=one_of("ddp", "fsdp"))
    """Data-parallel mode used when launched under torchrun (DDP replicates the
    model, FSDP shards it); no effect with one process."""

    def check(self) -> None:
        """Cross-field checks: ``optimizer_kwargs`` are hyperparameters that
        ``optimizer`` accepts (except ``lr`` and ``weight_decay``). Raises a
        :class:`~nlframe.spec.SpecError` with paths relative to the table."""
        from .registry import get_registry
        from .spec.convert import check_plugin_options
        from .spec.errors import SpecError, join

        kwargs = self.optimizer_kwargs
        errors = [(f"optimizer_kwargs.{key}", f"set train.{key} instead")
                  for key in ("lr", "weight_decay") if key in kwargs]
        reg = get_registry()
        if ("optimizer", self.optimizer) in reg:  # else the field's error says so
            rest = {k: v for k, v in kwargs.items() if k not in ("lr", "weight_decay")}
            errors += [(join("optimizer_kwargs", p), m) for p, m in check_plugin_options(
                "optimizer", reg.get("optimizer", self.optimizer), rest)]
        if errors:
            raise SpecError(errors)

