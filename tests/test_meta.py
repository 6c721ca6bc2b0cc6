"""Meta-tests: the plugin manual is complete and every built-in documents its maths.

* every hookspec has a docstring saying what ``obj`` is and how it is called,
  and at least one built-in plugin implements it and registers something;
* every built-in plugin's docstring states what it computes: an equation
  (``=``/``←``) for the algorithmic kinds, plus a paper citation (an arXiv id,
  or the scan contract of docs/concepts.md) where one is due; data sources, which are
  corpora and tasks rather than maths, need a docstring.
"""

import inspect

import pytest

from nlframe import get_registry, hookspecs
from nlframe.hookspecs import KINDS

ALGORITHMIC = ("memory", "objective", "optimizer", "backend", "block")
BUILTIN = "nlframe"


def _hookspecs():
    return [getattr(hookspecs, f"nlframe_register_{kind}") for kind in KINDS]


def test_every_kind_has_a_hookspec_and_nothing_else_is_one():
    declared = {n for n, f in vars(hookspecs).items()
                if n.startswith("nlframe_") and callable(f)}
    assert declared == {f"nlframe_register_{k}" for k in KINDS}


@pytest.mark.parametrize("spec", _hookspecs(), ids=lambda f: f.__name__)
def test_hookspec_is_documented(spec):
    doc = inspect.getdoc(spec) or ""
    assert len(doc.splitlines()) >= 3, f"{spec.__name__} needs a docstring of a few lines"
    assert "``obj``" in doc and "register" in doc, \
        f"{spec.__name__}: say what the registered ``obj`` is and how it is called"
    assert list(inspect.signature(spec).parameters) == ["register"]


@pytest.mark.parametrize("kind", KINDS)
def test_hookspec_is_exercised_by_a_builtin(kind):
    reg = get_registry()
    impls = getattr(reg.pm.hook, f"nlframe_register_{kind}").get_hookimpls()
    assert any(i.plugin_name.startswith(f"{BUILTIN}:") for i in impls), \
        f"no built-in module implements nlframe_register_{kind}"
    assert any(e.distribution == BUILTIN for e in reg.entries(kind)), \
        f"the built-in nlframe_register_{kind} registers nothing"


def _builtins():
    return [pytest.param(e, id=f"{e.kind}:{e.name}") for e in get_registry().entries()
            if e.distribution == BUILTIN]


def _docs(obj):
    mod = inspect.getmodule(obj)
    return inspect.getdoc(obj) or "", (mod.__doc__ or "") if mod else ""


@pytest.mark.parametrize("entry", _builtins())
def test_builtin_docstring_states_its_equation_and_source(entry):
    doc, module_doc = _docs(entry.obj)
    assert doc.strip(), f"{entry.kind} {entry.name!r} has no docstring"
    if entry.kind not in ALGORITHMIC:
        return
    assert "=" in doc or "←" in doc, \
        f"{entry.kind} {entry.name!r}: the docstring should give the equation it computes"
    cited = any(c in doc or c in module_doc for c in ("arXiv", "docs/concepts.md"))
    assert cited, f"{entry.kind} {entry.name!r}: cite the paper (arXiv id) the equation comes from"


def test_plugins_doc_is_generated_from_the_current_sources():
    """docs/plugins.md's hook reference and example listing match their sources."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "gen_hookspec_docs.py"
    spec = importlib.util.spec_from_file_location("gen_hookspec_docs", script)
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = gen.DOC.read_text(encoding="utf-8")
    assert gen.updated(text) == text, "docs/plugins.md is stale: run python scripts/gen_hookspec_docs.py"
    for kind in KINDS:
        assert f"nlframe_register_{kind}(register)" in text
