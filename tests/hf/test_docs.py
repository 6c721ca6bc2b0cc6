"""The python examples of docs/interop.md's Hugging Face sections run."""

import re
from pathlib import Path

import pytest

pytest.importorskip("transformers")

DOC = Path(__file__).resolve().parents[2] / "docs" / "interop.md"
SECTIONS = ("Hugging Face models with memory", "Ad-hoc level stacking")


def examples(section: str) -> list[str]:
    text = DOC.read_text()
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert match, f"docs/interop.md has no '## {section}' section"
    return re.findall(r"^```python\n(.*?)^```", match.group(1), re.S | re.M)


@pytest.mark.parametrize("section", SECTIONS)
def test_examples_run(section):
    blocks = examples(section)
    assert blocks, f"'## {section}' has no python example"
    for i, code in enumerate(blocks):
        exec(compile(code, f"{DOC}:{section}[{i}]", "exec"), {})  # noqa: S102
