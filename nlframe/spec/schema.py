"""The spec's own classes: :class:`BlockSpec` (one block table) and :class:`Spec`."""

from __future__ import annotations

from typing import Any

import attrs

from ..registry import get_registry
from ..train_config import TrainConfig
from .validators import positive_int

__all__ = ["BlockSpec", "Spec", "RESERVED_BLOCK_KEYS"]

RESERVED_BLOCK_KEYS = ("type", "repeat")


@attrs.frozen
class BlockSpec:
    """One ``[[...blocks]]`` table: a registered block ``type``, its ``Config``
    instance and ``repeat`` (independent copies stacked)."""

    type: str
    config: Any
    repeat: int = attrs.field(default=1, validator=positive_int)

    @property
    def cls(self) -> Any:
        return get_registry().get("block", self.type)


@attrs.frozen(kw_only=True)
class Spec:
    """A whole spec: ``model`` (a :class:`BlockSpec`, type ``lm`` by default),
    ``train`` (:class:`~nlframe.train_config.TrainConfig`), an optional
    ``description``; ``source`` is the file it came from (not compared)."""

    model: BlockSpec
    train: TrainConfig = attrs.field(factory=TrainConfig)
    description: str = ""
    source: str | None = attrs.field(default=None, eq=False, metadata={"internal": True})
