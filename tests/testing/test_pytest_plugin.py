"""``pytest --nlframe-conformance=KIND:NAME`` from a bare directory (no conftest needed)."""

import os
import re
import subprocess
import sys
import textwrap

import pytest


def _pytest(cwd, *args):
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_XDIST_WORKER", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def test_suite_runs_one_test_per_property_from_an_empty_directory(tmp_path):
    (tmp_path / "test_unrelated.py").write_text("def test_not_collected():\n    assert False\n")
    rc, out = _pytest(tmp_path, "--nlframe-conformance=optimizer:momentum",
                      "--nlframe-conformance=memory:linaer", "--continue-on-collection-errors",
                      "--nlframe-conformance-examples=2", "-v", "-rs")
    for prop in ("zero_lr_is_identity", "batched_equals_per_element", "pure", "state_round_trip",
                 "gradients_flow", "deterministic", "finite_for_bounded_inputs"):
        assert f"nlframe-conformance[optimizer:momentum]::{prop} PASSED" in out, out
    assert re.search(r"declared_invariants (PASSED|SKIPPED)", out)
    assert "test_not_collected" not in out  # no paths given: only the suites run
    # An unknown name is a collection error that lists the registered names.
    assert rc == 1 and "8 passed, 1 error" in out, out
    assert "unknown memory 'linaer'" in out and "did you mean 'linear'" in out, out


BROKEN = textwrap.dedent('''
    import torch
    import nlframe
    from nlframe.interfaces import UpdateRule


    class Leaky(UpdateRule):
        """W <- W - lr g, written into the caller's tensor."""

        hyperparams = {"lr": 0.1}

        def init(self, params):
            return {}

        def update(self, grads, state, params, **hyper):
            lr = self.resolve(hyper)["lr"]
            return {n: p.sub_(lr * grads[n]) for n, p in params.items()}, {}


    @nlframe.hookimpl
    def nlframe_register_optimizer(register):
        register("kit-leaky", Leaky)


    nlframe.get_registry().register_plugin(__import__(__name__), distribution="local")
''')


def test_violations_are_failures_and_explicit_paths_still_run(tmp_path):
    (tmp_path / "conftest.py").write_text(BROKEN)
    (tmp_path / "test_mine.py").write_text("def test_mine():\n    pass\n")
    rc, out = _pytest(tmp_path, "--nlframe-conformance=optimizer:kit-leaky",
                      "--nlframe-conformance-examples=3", "test_mine.py", "-q",
                      "-k", "pure or mine")
    assert rc == 1, out
    assert "1 failed, 1 passed" in out, out
    assert "violates 'pure'" in out and "params after update" in out


class _Config:
    def __init__(self, values):
        self.values = values

    def getoption(self, name):
        assert name == "nlframe_conformance"
        return self.values


@pytest.mark.parametrize("arg", ["optimizer", "block:mlp", "optimizer:"])
def test_malformed_request_is_a_usage_error(arg):
    from nlframe.testing.pytest_plugin import _targets

    with pytest.raises(pytest.UsageError, match="expected KIND:NAME"):
        _targets(_Config([arg]))
    assert _targets(_Config(["optimizer:lion", "backend:chunked"])) == [
        ("optimizer", "lion"), ("backend", "chunked")]
