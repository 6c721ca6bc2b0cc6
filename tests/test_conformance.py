"""Every registered optimizer, memory, objective and backend passes its conformance suite.

One test, parametrised over the registry and the properties of each suite, so
a new built-in (or an installed third-party plugin) is covered without
touching this file. Examples per property: ``NLFRAME_CONFORMANCE_EXAMPLES``
(default 3 here, to keep CI fast; the nightly profile raises it).
"""

import os

import pytest

from nlframe import get_registry
from nlframe.testing import PropertyNotApplicable, suite
from nlframe.testing.suites import SUITE_KINDS

EXAMPLES = int(os.environ.get("NLFRAME_CONFORMANCE_EXAMPLES",
                              "20" if os.environ.get("HYPOTHESIS_PROFILE") == "nightly" else "3"))


def _cases():
    reg = get_registry()
    for kind in SUITE_KINDS:
        for name in reg.names(kind):
            s = suite(kind, name)
            for prop in s.property_names():
                yield pytest.param(s, prop, id=f"{kind}:{name}::{prop}")


@pytest.mark.parametrize("plugin_suite, prop", list(_cases()))
def test_plugin_conforms(plugin_suite, prop, monkeypatch):
    if plugin_suite.kind == "backend" and plugin_suite.name == "compiled":
        # every drawn shape is a configuration of its own: trace it, and skip inductor's
        # code generation (5–60 s a shape here; tests/plugins/backends/test_compiled.py)
        monkeypatch.setenv("NLFRAME_COMPILE_BACKEND", "aot_eager")
    try:
        plugin_suite.run(prop, max_examples=EXAMPLES)
    except PropertyNotApplicable as exc:
        pytest.skip(str(exc))
