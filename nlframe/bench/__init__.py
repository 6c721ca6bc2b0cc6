"""Benchmarks, runnable as ``nlframe bench NAME`` or ``python benchmarks/NAME.py``.

Each module ``nlframe.bench.<name>`` defines ``main(argv: list[str] | None) -> int``
that measures side by side in one run and prints a table of ratios (never a
pass/fail on time).
"""

BENCHMARKS = ("scan", "optim", "train", "model")
