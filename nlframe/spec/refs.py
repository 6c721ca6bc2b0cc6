"""Plugin references: a plugin named in a spec, with its options."""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import attrs

from ..registry import get_registry

__all__ = ["PluginRef", "MemoryRef", "ObjectiveRef", "OptimizerRef"]


@attrs.frozen
class PluginRef:
    """A plugin named in a spec with its options: ``"name"`` or ``{type = "name", ...}``.

    Subclasses fix the plugin ``kind``; the name is checked against the registry
    and the options against what the plugin accepts (an update rule's
    ``hyperparams``, a plugin ``Config`` class, or the constructor's keywords).
    """

    kind: ClassVar[str] = ""
    type: str
    options: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def cls(self) -> Any:
        """The registered plugin object."""
        return get_registry().get(self.kind, self.type)

    def build(self, *args: Any, **overrides: Any) -> Any:
        """Instantiate the plugin: ``cls(*args, **options, **overrides)``."""
        return self.cls(*args, **{**self.options, **overrides})


@attrs.frozen
class MemoryRef(PluginRef):
    """A memory plugin, built as ``ref.build(dim_k, dim_v)``."""

    kind: ClassVar[str] = "memory"


@attrs.frozen
class ObjectiveRef(PluginRef):
    """A surprise-objective plugin, built as ``ref.build()``."""

    kind: ClassVar[str] = "objective"


@attrs.frozen
class OptimizerRef(PluginRef):
    """An update-rule plugin, built as ``ref.build()`` (options are its defaults)."""

    kind: ClassVar[str] = "optimizer"
