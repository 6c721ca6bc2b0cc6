"""pyproject's explicit package list covers every package in the tree."""

import pathlib
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_every_package_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set()
    for top, name in (("nlframe", "nlframe"), ("plugins", "nlframe_plugins")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((name, *rel)))
    assert found <= listed, f"add to pyproject packages: {sorted(found - listed)}"


def test_kernel_has_no_concrete_algorithms():
    """The kernel imports no plugin module: every memory/objective/rule/backend is a plugin.
    (The test kit, the benchmarks and the experiments are applications of the built-in
    plugins, not kernel.)"""
    for py in (ROOT / "nlframe").rglob("*.py"):
        if {"testing", "bench", "experiments"} & set(py.parts):
            continue
        text = py.read_text()
        assert "nlframe_plugins" not in text, f"{py.relative_to(ROOT)} imports a built-in plugin"
