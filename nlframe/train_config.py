"""The ``[train]`` table of a spec: defaults for ``nlframe train`` (flags override)."""

from __future__ import annotations

import attrs

__all__ = ["TrainConfig"]


def _positive(_inst, attr, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{attr.name}: expected a positive int, got {value!r}")


def _non_negative(_inst, attr, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{attr.name}: expected a number >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class TrainConfig:
    """Training defaults.

    ``optimizer`` names an optimizer (update-rule) plugin driving
    :class:`nlframe.optim.Optimizer`; ``optimizer_kwargs`` are its extra
    hyperparameters. Parameters the rule does not take (e.g. vectors under
    ``muon``, which orthogonalises matrices) are trained by ``fallback_optimizer``. The learning rate follows ``schedule`` (``constant``,
    ``cosine`` or ``linear`` decay to ``min_lr_ratio·lr``) after
    ``warmup_steps`` of linear warm-up.
    """

    data: str = "stdlib"
    steps: int = attrs.field(default=300, validator=_positive)
    batch_size: int = attrs.field(default=8, validator=_positive)
    seq_len: int = attrs.field(default=128, validator=_positive)
    optimizer: str = "adamw"
    optimizer_kwargs: dict = attrs.field(factory=dict)
    fallback_optimizer: str = "adamw"
    lr: float = attrs.field(default=3e-3, validator=_non_negative)
    weight_decay: float = attrs.field(default=0.1, validator=_non_negative)
    schedule: str = attrs.field(default="cosine", validator=attrs.validators.in_(
        ("constant", "cosine", "linear")))
    warmup_steps: int = attrs.field(default=20, validator=_non_negative)
    min_lr_ratio: float = attrs.field(default=0.1, validator=_non_negative)
    grad_clip: float = attrs.field(default=1.0, validator=_non_negative)
    eval_every: int = attrs.field(default=100, validator=_positive)
    eval_batches: int = attrs.field(default=8, validator=_positive)
    checkpoint_every: int = attrs.field(default=100, validator=_positive)
    log_every: int = attrs.field(default=10, validator=_positive)
    seed: int = 0
    device: str = "cpu"
