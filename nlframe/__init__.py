"""nlframe: Nested Learning in PyTorch.

A model and its optimizers as nested optimization problems ("levels"), each
learning from its own context at its own frequency. Everything concrete is a
plugin; this package is the small kernel that connects them.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version as _version

from .hookspecs import hookimpl, hookspec
from .interfaces import Backend, Block, DataSource, Memory, Objective, UpdateRule
from .level import ContextFlow, Level, MemoryState
from .registry import get_registry, reload_registry
from .scan import initial_state, memory_scan
from . import optim
from .spec import SpecError, load_spec
from .build import build
from .layers import layer

try:
    __version__ = _version("nlframe")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = [
    "__version__",
    "hookimpl",
    "hookspec",
    "memory_scan",
    "initial_state",
    "MemoryState",
    "ContextFlow",
    "Level",
    "Memory",
    "Objective",
    "UpdateRule",
    "Backend",
    "Block",
    "DataSource",
    "get_registry",
    "reload_registry",
    "load_spec",
    "build",
    "layer",
    "SpecError",
    "optim",
]
