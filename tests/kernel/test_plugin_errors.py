"""Plugin failures a user must see clearly: name clashes with built-ins, disabling a
distribution, misspelt hooks and hooks that raise SystemExit.

Third-party distributions are simulated by ``*.dist-info`` directories on a
temporary ``sys.path`` entry, so ``importlib.metadata`` finds their entry points
exactly as it finds installed ones.
"""

import os
import subprocess
import sys
import textwrap
import types

import pytest
from click.testing import CliRunner

import nlframe
from nlframe import registry
from nlframe.cli import main
from nlframe.registry import (DuplicatePluginError, PluginLoadWarning, Registry,
                              UnknownHookWarning)

FAKE_ADAMW = """
    import nlframe

    class FakeAdamW:
        '''Not the real AdamW.'''

    @nlframe.hookimpl
    def nlframe_register_optimizer(register):
        register("adamw", FakeAdamW)
"""


@pytest.fixture
def dists(tmp_path, monkeypatch):
    """``add(dist, module, body, ep=module)`` installs a fake distribution for one test;
    the process-wide registry is reloaded from entry points on next use and restored
    afterwards."""
    modules = []

    def add(dist, module, body, ep=None):
        info = tmp_path / f"{dist.replace('-', '_')}-0.3.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
        (info / "entry_points.txt").write_text(f"[nlframe]\n{ep or module} = {module}\n")
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(body))
        modules.append(module)

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_REGISTRY", None)
    yield add
    for m in modules:
        sys.modules.pop(m, None)


def _invoke(args, **env):
    return CliRunner().invoke(main, args, env=env)


def _assert_clean_error(result):
    """Exit 1 through click (not an escaped exception), one ``Error:`` line, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exc_info
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


# -- 1. a third-party name that clashes with a built-in -------------------------------------

def test_clash_with_builtin_is_one_clean_error_naming_both_distributions(dists):
    # "evil-optim" sorts before "nlframe": the order in which the old loader blamed the built-in
    dists("evil-optim", "evil_optim_mod", FAKE_ADAMW, ep="optimizers")
    line = _assert_clean_error(_invoke(["plugins", "list"]))
    assert line == (
        "Error: optimizer plugin 'adamw' is registered twice: by distribution 'nlframe' "
        "(entry point 'optimizers') and by distribution 'evil-optim' (entry point "
        "'optimizers'). Uninstall 'evil-optim', or disable it with "
        "NLFRAME_DISABLE_PLUGINS=evil-optim.")


def test_clash_error_has_structured_fields(dists):
    dists("zz-optim", "zz_optim_mod", FAKE_ADAMW)
    with pytest.raises(DuplicatePluginError) as info:
        Registry().load_entry_points()
    err = info.value
    assert (err.kind, err.name, err.distributions) == ("optimizer", "adamw", ("nlframe", "zz-optim"))
    assert isinstance(err, ValueError) and err.clashes == [err]


def test_clash_in_a_real_process_prints_no_traceback(dists, tmp_path):
    dists("evil-optim", "evil_optim_mod", FAKE_ADAMW)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "nlframe", "plugins", "list"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 1 and r.stdout == ""
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("Error: optimizer plugin 'adamw' is registered twice")
    assert "NLFRAME_DISABLE_PLUGINS=evil-optim" in r.stderr


def test_two_third_party_distributions_clashing_suggest_both(dists):
    body = """
        import nlframe

        @nlframe.hookimpl
        def nlframe_register_memory(register):
            register("same", object)
    """
    dists("dist-a", "dist_a_mod", body)
    dists("dist-b", "dist_b_mod", body)
    line = _assert_clean_error(_invoke(["plugins", "list"]))
    assert "memory plugin 'same'" in line and "'dist-a'" in line and "'dist-b'" in line
    assert "NLFRAME_DISABLE_PLUGINS=dist-b" in line and "NLFRAME_DISABLE_PLUGINS=dist-a" in line
    r = _invoke(["plugins", "list", "--kind", "memory", "--json"], NLFRAME_DISABLE_PLUGINS="dist-b")
    assert r.exit_code == 0 and '"distribution": "dist-a"' in r.output


def test_every_clash_is_reported_at_once(dists):
    dists("evil-optim", "evil_optim_mod", FAKE_ADAMW)
    dists("evil-memory", "evil_memory_mod", """
        import nlframe

        @nlframe.hookimpl
        def nlframe_register_memory(register):
            register("linear", object)
    """)
    with pytest.raises(DuplicatePluginError) as info:
        Registry().load_entry_points()
    assert [(c.kind, c.name) for c in info.value.clashes] == [("memory", "linear"),
                                                              ("optimizer", "adamw")]
    assert str(info.value).startswith("2 plugin name clashes:\n")


def test_clash_removes_the_whole_local_plugin():
    reg = Registry()
    reg.register_plugin(types.SimpleNamespace(
        nlframe_register_optimizer=nlframe.hookimpl(lambda register: register("lion", object))),
        name="first")
    clashing = types.ModuleType("clashing")

    @nlframe.hookimpl
    def nlframe_register_memory(register):
        register("kept-if-no-clash", object)

    @nlframe.hookimpl
    def nlframe_register_optimizer(register):
        register("lion", object)

    clashing.nlframe_register_memory = nlframe_register_memory
    clashing.nlframe_register_optimizer = nlframe_register_optimizer
    with pytest.raises(DuplicatePluginError, match="Register one of them under another name"):
        reg.register_plugin(clashing)
    assert reg.names("memory") == [] and not reg.pm.is_registered(clashing)


def test_clash_swallowed_by_the_hook_is_still_an_error():
    reg = Registry()
    reg.register_plugin(types.SimpleNamespace(
        nlframe_register_data=nlframe.hookimpl(lambda register: register("x", object))),
        name="first")

    @nlframe.hookimpl
    def nlframe_register_data(register):
        try:
            register("x", object)
        except Exception:  # noqa: BLE001 - the plugin hides the clash; the registry must not
            pass

    sneaky = types.ModuleType("sneaky")
    sneaky.nlframe_register_data = nlframe_register_data
    with pytest.raises(DuplicatePluginError, match="data plugin 'x' is registered twice"):
        reg.register_plugin(sneaky)


# -- 2. disabling by distribution name ------------------------------------------------------

@pytest.mark.parametrize("value", ["evil-optim", "Evil_Optim", "evil-optim:optimizers"])
def test_disable_by_distribution_keeps_builtins_and_drops_impostor(dists, value):
    dists("evil-optim", "evil_optim_mod", FAKE_ADAMW, ep="optimizers")
    r = _invoke(["plugins", "list", "--kind", "optimizer"], NLFRAME_DISABLE_PLUGINS=value)
    assert r.exit_code == 0, r.output
    adamw = [line.split() for line in r.output.splitlines() if line.startswith("optimizer  adamw")]
    assert len(adamw) == 1 and adamw[0][2] == "nlframe"
    assert "evil-optim" not in r.output


def test_disable_by_entry_point_name_still_matches_every_distribution(dists):
    # documented: a bare entry-point name skips that entry point whoever ships it
    dists("evil-optim", "evil_optim_mod", FAKE_ADAMW, ep="optimizers")
    r = _invoke(["plugins", "list", "--kind", "optimizer", "--json"],
                NLFRAME_DISABLE_PLUGINS="optimizers")
    assert r.exit_code == 0 and '"adamw"' not in r.output and '"momentum"' not in r.output


def test_only_plugins_accepts_a_distribution_name(dists, monkeypatch):
    dists("evil-optim", "evil_optim_mod", FAKE_ADAMW)
    monkeypatch.setenv("NLFRAME_ONLY_PLUGINS", "nlframe")
    reg = Registry()
    reg.load_entry_points()
    assert {e.distribution for e in reg.entries()} == {"nlframe"}
    assert reg.entry("optimizer", "adamw").distribution == "nlframe"


# -- 3. misspelt hook names -----------------------------------------------------------------

def test_misspelt_hook_warns_with_closest_name():
    mod = types.ModuleType("typo_plugin")
    mod.nlframe_register_optimiser = nlframe.hookimpl(lambda register: register("x", object))
    with pytest.warns(UnknownHookWarning) as caught:
        Registry().register_plugin(mod, distribution="typo-dist")
    assert [str(w.message) for w in caught] == [
        "plugin 'typo_plugin' from distribution 'typo-dist' implements unknown hook "
        "'nlframe_register_optimiser', which is never called; did you mean "
        "'nlframe_register_optimizer'?"]
    assert issubclass(UnknownHookWarning, PluginLoadWarning)


def test_hook_without_marker_warns():
    mod = types.ModuleType("unmarked")
    mod.nlframe_register_memory = lambda register: register("x", object)
    reg = Registry()
    with pytest.warns(UnknownHookWarning, match="'unmarked' .* defines 'nlframe_register_memory' "
                                                "without @nlframe.hookimpl"):
        reg.register_plugin(mod)
    assert reg.names("memory") == []


def test_unrelated_unknown_name_lists_hooks():
    mod = types.ModuleType("odd")
    mod.nlframe_frobnicate = nlframe.hookimpl(lambda: None)
    with pytest.warns(UnknownHookWarning, match="hooks are: nlframe_register_memory, "):
        Registry().register_plugin(mod)


def test_correct_plugins_do_not_warn(recwarn):
    mod = types.ModuleType("fine")
    mod.nlframe_register_memory = nlframe.hookimpl(lambda register: register("x", object))
    mod.nlframe_helper_not_a_hook = lambda: None
    Registry().register_plugin(mod)
    assert not [w for w in recwarn if issubclass(w.category, PluginLoadWarning)]


def test_misspelt_hook_in_cli_is_one_warning_line(dists):
    dists("typo-dist", "typo_mod", """
        import nlframe

        @nlframe.hookimpl
        def nlframe_register_optimiser(register):
            register("lion2", object)
    """)
    r = _invoke(["plugins", "list", "--kind", "optimizer"])
    assert r.exit_code == 0 and r.exception is None, r.output
    warn = [line for line in r.stderr.splitlines() if "nlframe_register_optimiser" in line]
    assert warn == ["warning: plugin 'typo_mod' from distribution 'typo-dist' implements unknown "
                    "hook 'nlframe_register_optimiser', which is never called; did you mean "
                    "'nlframe_register_optimizer'?"]
    assert "momentum" in r.stdout and "lion2" not in r.stdout


def test_wrong_hook_signature_is_reported_not_raised():
    mod = types.ModuleType("badsig")
    mod.nlframe_register_memory = nlframe.hookimpl(lambda reg: None)
    reg = Registry()
    with pytest.warns(PluginLoadWarning, match="plugin 'badsig' from distribution '<local>' is "
                                               "invalid: .*reg"):
        reg.register_plugin(mod)
    assert not reg.pm.is_registered(mod)


# -- 4. hooks that raise SystemExit ---------------------------------------------------------

def test_system_exit_in_hook_is_reported_like_any_failure():
    def bad(register):
        register("half", object)
        raise SystemExit(3)

    mod = types.ModuleType("exiting")
    mod.nlframe_register_data = nlframe.hookimpl(bad)
    mod.nlframe_register_memory = nlframe.hookimpl(lambda register: register("ok", object))
    reg = Registry()
    with pytest.warns(PluginLoadWarning) as caught:
        reg.register_plugin(mod, distribution="exit-dist")
    assert [str(w.message) for w in caught] == [
        "plugin 'exiting' from distribution 'exit-dist' failed in nlframe_register_data: "
        "SystemExit: 3"]
    assert reg.names("data") == [] and reg.names("memory") == ["ok"]


def test_bare_sys_exit_in_hook_names_the_exception():
    mod = types.ModuleType("bare_exit")
    mod.nlframe_register_data = nlframe.hookimpl(lambda register: sys.exit())
    with pytest.warns(PluginLoadWarning, match=r"failed in nlframe_register_data: SystemExit$"):
        Registry().register_plugin(mod)


def test_keyboard_interrupt_in_hook_propagates_and_leaves_nothing():
    def interrupted(register):
        register("half", object)
        raise KeyboardInterrupt

    mod = types.ModuleType("interrupted")
    mod.nlframe_register_data = nlframe.hookimpl(interrupted)
    reg = Registry()
    with pytest.raises(KeyboardInterrupt):
        reg.register_plugin(mod)
    assert reg.names("data") == [] and not reg.pm.is_registered(mod)


@pytest.mark.parametrize("where", ["hook", "import"])
def test_system_exit_in_cli_is_a_warning_and_the_command_runs(dists, where):
    body = {"hook": """
        import sys
        import nlframe

        @nlframe.hookimpl
        def nlframe_register_data(register):
            sys.exit(3)
    """, "import": "import sys\nsys.exit(3)\n"}[where]
    dists("exit-dist", "exit_mod", body)
    r = _invoke(["plugins", "list", "--kind", "data"])
    assert r.exit_code == 0 and r.exception is None, r.output
    what = "failed in nlframe_register_data" if where == "hook" else "failed to import"
    assert r.stderr.splitlines() == [
        f"warning: plugin 'exit_mod' from distribution 'exit-dist' {what}: SystemExit: 3"]
    assert "stdlib" in r.stdout
