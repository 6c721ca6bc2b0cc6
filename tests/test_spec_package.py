"""``nlframe.spec`` is a package whose public names stay importable from the top."""

from __future__ import annotations

import importlib
import subprocess
import sys

import nlframe.spec as spec_mod

OLD_ALL = ["Spec", "BlockSpec", "PluginRef", "MemoryRef", "ObjectiveRef", "OptimizerRef",
           "SpecError", "load_spec", "dump_spec", "spec_to_dict", "structure", "converter",
           "positive_int", "non_negative", "in_range", "one_of", "plugin_name"]


def test_every_public_name_is_importable_from_nlframe_spec():
    assert set(OLD_ALL) <= set(spec_mod.__all__)
    for name in [*spec_mod.__all__, "InRange", "OneOf", "PluginName", "check_block",
                 "check_plugin_options", "RESERVED_BLOCK_KEYS"]:
        assert getattr(spec_mod, name) is not None, name
    assert isinstance(spec_mod.positive_int, type(spec_mod.positive_int))  # testing.strategies
    assert spec_mod.converter() is spec_mod.convert.converter()


def test_submodules_are_the_homes():
    assert spec_mod.SpecError is importlib.import_module("nlframe.spec.errors").SpecError
    assert spec_mod.positive_int is importlib.import_module("nlframe.spec.validators").positive_int
    assert spec_mod.MemoryRef is importlib.import_module("nlframe.spec.refs").MemoryRef
    assert spec_mod.load_spec is importlib.import_module("nlframe.spec.load").load_spec


def test_train_config_imports_first_without_a_cycle():
    for first in ("nlframe.train_config", "nlframe.spec.validators", "nlframe.build"):
        out = subprocess.run([sys.executable, "-c", f"import {first}; import nlframe.spec; "
                              "print(nlframe.spec.Spec.__name__)"], capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout == "Spec\n", out.stderr
