"""Registry behaviours: entry points, unknown names, duplicates, broken plugins, disabling."""

import json
import os
import subprocess
import sys
import textwrap
import types

import pytest

import nlframe
from nlframe.hookspecs import KINDS
from nlframe.registry import (DuplicatePluginError, PluginLoadWarning, Registry,
                              UnknownPluginError, get_registry)


def _plugin_module(name, **hooks):
    mod = types.ModuleType(name)
    for kind, regs in hooks.items():
        def hook(register, _regs=regs):
            for n, obj in _regs:
                register(n, obj)
        hook.__name__ = f"nlframe_register_{kind}"
        setattr(mod, hook.__name__, nlframe.hookimpl(hook))
    return mod


class Thing:
    """A thing: y = x."""


def test_local_plugin_registers_and_looks_up():
    reg = Registry()
    reg.register_plugin(_plugin_module("throwaway", memory=[("thing", Thing)]), distribution="mine")
    assert reg.get("memory", "thing") is Thing
    entry = reg.entry("memory", "thing")
    assert entry.distribution == "mine" and entry.description == "A thing: y = x."
    assert ("memory", "thing") in reg and reg.names("memory") == ["thing"]


def test_unknown_name_lists_registered_and_suggests():
    reg = Registry()
    reg.register_plugin(_plugin_module("p", objective=[("huber", Thing), ("l2", Thing)]))
    with pytest.raises(UnknownPluginError) as info:
        reg.get("objective", "hubber")
    msg = str(info.value)
    assert "'hubber'" in msg and "did you mean 'huber'" in msg and "huber, l2" in msg
    assert isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match="unknown plugin kind"):
        reg.get("memoryy", "x")


def test_duplicate_name_names_both_distributions():
    reg = Registry()
    reg.register_plugin(_plugin_module("a", optimizer=[("lion", Thing)]), distribution="dist-a")
    with pytest.raises(DuplicatePluginError) as info:
        reg.register_plugin(_plugin_module("b", optimizer=[("lion", Thing)]), distribution="dist-b")
    assert "dist-a" in str(info.value) and "dist-b" in str(info.value)


def test_same_name_in_different_kinds_is_fine():
    reg = Registry()
    reg.register_plugin(_plugin_module("a", optimizer=[("x", Thing)], memory=[("x", Thing)]))
    assert reg.get("optimizer", "x") is reg.get("memory", "x")


def test_raising_hook_warns_and_keeps_others():
    def bad(register):
        register("half", Thing)
        raise RuntimeError("boom")

    mod = types.ModuleType("badhook")
    mod.nlframe_register_data = nlframe.hookimpl(bad)
    mod2 = _plugin_module("good", data=[("fine", Thing)])
    reg = Registry()
    with pytest.warns(PluginLoadWarning, match="boom"):
        reg.register_plugin(mod, distribution="bad-dist")
    reg.register_plugin(mod2)
    assert reg.names("data") == ["fine"]  # the half-registered entry was rolled back


def test_invalid_names_rejected():
    reg = Registry()
    with pytest.warns(PluginLoadWarning, match="invalid memory plugin name"):
        reg.register_plugin(_plugin_module("p", memory=[("Bad Name", Thing)]))
    assert reg.names("memory") == []


def test_builtins_come_from_entry_points():
    reg = get_registry()
    dists = {e.distribution for e in reg.entries()}
    assert "nlframe" in dists
    for e in reg.entries():
        if e.distribution == "nlframe":
            assert e.obj.__module__.startswith("nlframe_plugins."), e


def test_every_kind_has_a_builtin():
    reg = get_registry()
    missing = [k for k in KINDS if not any(e.distribution == "nlframe" for e in reg.entries(k))]
    assert not missing, f"kinds without a built-in plugin: {missing}"


@pytest.fixture
def fake_dists(tmp_path):
    """Two installed distributions on a temporary sys.path entry: one broken, one good."""
    def dist(name, module, body):
        info = tmp_path / f"{name}-1.2.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
        (info / "entry_points.txt").write_text(f"[nlframe]\n{module} = {module}\n")
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(body))

    dist("broken-plugin", "broken_mod", "raise ImportError('missing dependency xyz')\n")
    dist("good-plugin", "good_mod", """
        import nlframe

        class Echo:
            '''Echo memory: y = x.'''

        @nlframe.hookimpl
        def nlframe_register_memory(register):
            register("echo", Echo)
    """)
    return tmp_path


def _cli(args, path, **env):
    e = {**os.environ, "PYTHONPATH": str(path), **env}
    return subprocess.run([sys.executable, "-m", "nlframe", *args], capture_output=True,
                          text=True, env=e, timeout=120)


def test_broken_entry_point_warns_one_line_and_list_succeeds(fake_dists):
    r = _cli(["plugins", "list", "--json"], fake_dists)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    warn = [line for line in r.stderr.splitlines() if "broken_mod" in line]
    assert len(warn) == 1 and "broken-plugin" in warn[0] and "missing dependency xyz" in warn[0]
    echo = [row for row in rows if row["name"] == "echo"]
    assert echo == [{"kind": "memory", "name": "echo", "distribution": "good-plugin",
                     "version": "1.2.3", "description": "Echo memory: y = x.",
                     "source": "good_mod"}]
    for row in rows:
        assert {"kind", "name", "distribution", "version"} <= set(row)


def test_disable_plugins_env(fake_dists):
    r = _cli(["plugins", "list", "--json"], fake_dists,
             NLFRAME_DISABLE_PLUGINS="broken_mod,good_mod")
    assert r.returncode == 0 and "broken_mod" not in r.stderr
    assert not [row for row in json.loads(r.stdout) if row["name"] == "echo"]


def test_plugins_list_table_and_kind_filter():
    from click.testing import CliRunner

    from nlframe.cli import main

    r = CliRunner().invoke(main, ["plugins", "list", "--kind", "optimizer"])
    assert r.exit_code == 0 and "momentum" in r.output and "KIND" in r.output
    r = CliRunner().invoke(main, ["plugins", "list", "--json"])
    kinds = {row["kind"] for row in json.loads(r.output)}
    assert set(KINDS) <= kinds


def test_version_flag():
    from click.testing import CliRunner

    from nlframe.cli import main

    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and nlframe.__version__ in r.output


def test_hookspecs_documented():
    from nlframe import hookspecs

    for kind in KINDS:
        fn = getattr(hookspecs, f"nlframe_register_{kind}")
        assert fn.__doc__ and len(fn.__doc__.split()) > 20, kind
        assert "register" in fn.__doc__
