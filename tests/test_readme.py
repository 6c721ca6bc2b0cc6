"""The README's runnable Python example runs as written and gives finite reads."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_scan_example_runs_as_written():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)  # noqa: S102 - our own README
    for name in ("y", "y2"):
        assert torch.isfinite(namespace[name]).all(), name
    assert namespace["state"].step == 1024


def test_readme_layer_example_runs_as_written():
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
              if "nlframe.layer(" in b]
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["y2"].shape == (2, 64, 128) and torch.isfinite(namespace["y2"]).all()
    assert not torch.allclose(namespace["y"], namespace["y2"])  # the memory learned from x
