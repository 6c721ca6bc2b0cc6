"""The benchmark scripts of ``benchmarks/`` run end to end at tiny sizes (no timings
are asserted: only that every row they promise is printed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fused_levels_prints_a_row_per_level_and_inner_gradient(capsys):
    from nlframe_plugins.backends import chunked_levels

    script = _load("fused_levels")
    assert script.main(["--seq-len", "12", "--rounds", "1", "--dim", "8", "--hidden", "16",
                        "--chunks", "1", "2"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert [r.split("|")[1:3] for r in rows[1:]] == [
        [" CMS, C = 1 ", " full "], [" CMS, C = 1 ", " truncated "],
        [" CMS, C = 2 ", " full "], [" CMS, C = 2 ", " truncated "],
        [" self-modifying Titans ", " full "], [" self-modifying Titans ", " truncated "]]
    assert chunked_levels.FUSED_TILES  # switched back on
