"""Task commands of the CLI, one module per group of commands.

Each module defines ``register(main)`` that attaches its click commands to the
``nlframe`` group.
"""

from __future__ import annotations

import importlib
import importlib.util

_MODULES = ("spec", "train", "bench", "backends", "experiments")


def register(main) -> None:
    for name in _MODULES:
        module = f"{__name__}.{name}"
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module).register(main)
