"""``stdlib``: the embedded default corpus — the Python standard library's own source, as bytes.

Real text present on every machine, with no download: the ``.py`` files
under ``sysconfig.get_paths()["stdlib"]`` of the running interpreter, found
at first use and cached (see :mod:`.corpus`). Left out: ``site-packages`` /
``dist-packages`` (third-party code, differs per environment),
``__pycache__``, the machine-generated ``_sysconfigdata*`` modules, and —
unless ``include_tests=True`` — the test suites (directories ``test``,
``tests``, ``idle_test``), whose deliberately odd inputs are a poor language
sample and triple the size. CPython 3.11 gives about 730 files, 13 MB.
The corpus depends on the Python version (recorded in the manifest).
"""

from __future__ import annotations

import sysconfig
from pathlib import Path
from typing import Any

from .common import check_int, check_no_arg
from .corpus import ByteCorpus, list_files, open_corpus

__all__ = ["stdlib", "stdlib_files"]

_ALWAYS_SKIPPED = ("site-packages", "dist-packages", "__pycache__")
_TEST_DIRS = ("test", "tests", "idle_test")


def stdlib_files(root: Path, *, include_tests: bool = False) -> list[str]:
    """Sorted relative paths of the standard library's ``.py`` files under ``root``."""
    skip = _ALWAYS_SKIPPED + (() if include_tests else _TEST_DIRS)
    return [p for p in list_files(root, suffixes=(".py",), skip_dirs=skip)
            if not Path(p).name.startswith("_sysconfigdata")]


def stdlib(arg: Any = None, *, val_fraction: float = 0.05, include_tests: bool = False,
           max_files: int | None = None, verify: bool = True) -> ByteCorpus:
    """The standard-library byte corpus (vocab 256), split ~5% validation by file.

    ``max_files`` keeps only the first N files in sorted order (small builds
    for tests); ``verify`` checks the cached data's sha256 on open.
    """
    check_no_arg("stdlib", arg)
    if max_files is not None:
        check_int("stdlib", "max_files", max_files, 2)
    root = Path(sysconfig.get_paths()["stdlib"])
    files = stdlib_files(root, include_tests=include_tests)
    if max_files is not None:
        files = files[:max_files]
    options = {"include_tests": include_tests, "max_files": max_files}
    return open_corpus("stdlib", root, files, val_fraction=val_fraction, verify=verify,
                       options=options)
