import pytest

from nlframe import get_registry

from . import local_plugins


@pytest.fixture
def register():
    """``register(**kind_items)`` adds local plugins (plus the kit's) to the global registry
    for one test; they are removed afterwards."""
    added = []

    def add(**extra):
        mod = local_plugins.module(f"kit_local_plugins_{len(added)}", **extra) if not added else \
            local_plugins.bare_module(f"kit_local_plugins_{len(added)}", **extra)
        get_registry().register_plugin(mod, distribution="tests")
        added.append(mod)
        return mod

    yield add
    for mod in added:
        get_registry().unregister_plugin(mod)


@pytest.fixture
def kit_plugins(register):
    """The kit's local plugins (``kit-linear``, ``kit-residual``, ``kit-l2``,
    ``kit-reference``, ``kit-linear-l2``) registered for one test."""
    register()
    return register
