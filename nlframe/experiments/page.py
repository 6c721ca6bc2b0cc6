"""The results page: every experiment's section from its ``results.json``, as Markdown."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .base import ExperimentError

__all__ = ["write_page", "render", "anchor"]

HEADER = """# Results

Small-scale versions of the experiments of the Nested Learning, Titans and
related papers, run by nlframe itself. Regenerate this page with

```bash
nlframe experiments run all --out docs/results
```

(one experiment: `nlframe experiments run reading --out docs/results`; the
configurations are in `specs/experiments/`). Every number is the mean ±
standard deviation over the seeds named in its section — all seeds that were
run, none left out — and the per-seed values are in each section's
`results.json`. These are models of about a million parameters trained for
minutes on a CPU; where they agree or disagree with the papers' findings at
scale, the section says so. A section's run time counts the work it did
itself: experiment 2's trainings are done (and timed) by experiment 1, which
reads with the same models.
"""


def _table(t: dict) -> str:
    lines = []
    if t.get("caption"):
        lines += [f"*{t['caption']}*", ""]
    lines.append("| " + " | ".join(t["columns"]) + " |")
    lines.append("|" + "|".join("---" for _ in t["columns"]) + "|")
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in t["rows"]]
    return "\n".join(lines)


def _section(s: dict, rel: str) -> str:
    parts = [f"## {s['title']}", "", s["question"].strip(), "", "**Setup.** " + s["setup"].strip(), ""]
    if s.get("quick"):
        parts += ["!!! warning \"Toy run\"",
                  "    Produced with `--quick`: toy sizes that test the pipeline; the numbers "
                  "mean nothing.", ""]
    for t in s["tables"]:
        parts += [_table(t), ""]
    for f in s["figures"]:
        parts += [f"![{f['caption']}]({rel}/{f['file']})", "", f"*{f['caption']}*", ""]
    if s["findings"]:
        parts += ["**What it shows.**", ""] + [f"- {x}" for x in s["findings"]] + [""]
    parts += [f"<small>Run time {s['seconds'] / 60:.1f} min.</small>", ""]
    return "\n".join(parts)


def render(out: Path, page: Path) -> str:
    from . import EXPERIMENTS

    rel = os.path.relpath(out, page.parent).replace(os.sep, "/")
    sections = []
    for name in EXPERIMENTS:
        path = out / name / "results.json"
        if path.is_file():
            try:
                sections.append(json.loads(path.read_text()))
            except ValueError as exc:
                raise ExperimentError(f"{path}: unreadable ({exc}); rerun that experiment") from None
    if not sections:
        raise ExperimentError(f"no experiment results in {out}")
    total = sum(s["seconds"] for s in sections) / 60
    seen = {json.dumps(s.get("machine"), sort_keys=True) for s in sections if s.get("machine")}
    where = "; ".join(f"{m['device']}, torch {m['torch']}, nlframe {m['nlframe']}, {m['date']}"
                      for m in map(json.loads, sorted(seen)))
    machine = f"*Measured on {where or 'an unrecorded machine'}; total run time {total:.0f} min.*"
    toc = ["| | experiment |", "|---|---|"] + [
        f"| {i + 1} | [{s['title']}](#{anchor(s['title'])}) |" for i, s in enumerate(sections)]
    return "\n".join([HEADER, machine, "", *toc, ""] + [_section(s, rel) for s in sections])


def anchor(title: str) -> str:
    """The anchor MkDocs' toc extension gives a heading."""
    import re

    slug = re.sub(r"[^\w\s-]", "", title.lower()).strip()
    return re.sub(r"[\s-]+", "-", slug)


def write_page(out: Path, page: Path) -> Path:
    text = render(out, page)
    page.parent.mkdir(parents=True, exist_ok=True)
    tmp = page.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(page)
    return page
