"""The documentation site: generated reference pages are current, and the site
builds under ``mkdocs build --strict`` (no broken links or anchors, every page in nav)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    script = ROOT / "scripts" / "gen_reference_docs.py"
    spec = importlib.util.spec_from_file_location("gen_reference_docs", script)
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen


def test_reference_pages_are_generated_from_the_current_sources():
    gen = _generator()
    pages = gen.generated()
    assert set(pages) == {"spec.md", "cli.md", "equations.md"}
    for name, text in pages.items():
        path = gen.OUT / name
        assert path.is_file() and path.read_text(encoding="utf-8") == text, (
            f"docs/reference/{name} is stale: run python scripts/gen_reference_docs.py")
    # Same text once the Configs' string annotations are resolved into types (as
    # structuring a spec does; other tests in this process may have done it already).
    import attrs

    from nlframe.registry import get_registry

    for entry in get_registry().entries("block"):
        try:
            attrs.resolve_types(entry.obj.Config)
        except NameError:  # an annotation only importable under TYPE_CHECKING
            pass
    # ... and once click has cached a help option built from a bare Context (--help only).
    import click

    from nlframe.cli import main

    saved = getattr(main, "_help_option", None)
    try:
        main._help_option = None
        main.get_help_option(click.Context(main))
        assert gen.generated() == pages, "the reference pages are not deterministic"
    finally:
        main._help_option = saved
    for text in pages.values():
        assert " at 0x" not in text and str(ROOT) not in text
    spec = pages["spec.md"]
    for anchor in ("block-hope", "memory-mlp", "objective-l2", "optimizer-adam",
                   "backend-chunked", "data-stdlib"):
        assert f"{{#{anchor}}}" in spec
    assert "`chunk_sizes`" in spec and "C(ℓ) per level" in spec  # a field docstring
    assert "## `nlframe train` {#nlframe-train}" in pages["cli.md"]
    eqs = pages["equations.md"]
    for heading in ("(arXiv 2512.24695) {#nl}", "(arXiv 2501.00663) {#titans}",
                    "(arXiv 2504.13173) {#miras}", "(arXiv 2505.23735) {#atlas}",
                    "(arXiv 2407.04620) {#ttt}", "(arXiv 2406.06484) {#deltanet}"):
        assert heading in eqs
    assert "| eqs. 86–93 | [block `self-mod-titans`](spec.md#block-self-mod-titans) |" in eqs
    assert "[optimizer `m3`](spec.md#optimizer-m3): Deviations from the pseudo-code" in eqs


def test_equations_page_fails_on_a_citation_it_cannot_attribute(monkeypatch):
    gen = _generator()
    real = gen._docstrings
    monkeypatch.setattr(gen, "_docstrings", lambda rel: real(rel) + (
        [("nlframe.scan", "bogus", "Some rule (eq. 5).")] if rel == "nlframe/scan.py" else []))
    with pytest.raises(SystemExit, match="cannot tell the paper"):
        gen.render_equations()
    monkeypatch.setattr(gen, "_docstrings", lambda rel: real(rel) + (
        [("nlframe.scan", "bogus", "NL eq. (5).")] if rel == "nlframe/scan.py" else []))
    with pytest.raises(SystemExit, match="unparsed equation reference"):
        gen.render_equations()


def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip("mkdocs-material is not installed (pip install -e '.[docs]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "reference" / "spec" / "index.html").is_file()
