"""``text:PATH``: your own corpus — a text file, or every file under a directory — as bytes.

A directory is read recursively in sorted relative-path order (hidden files
and directories skipped; ``suffixes=[".txt", ".md"]`` keeps only those) and
split into train/validation by file (stable hash of the relative path); a
single file is split by position (last ``val_fraction`` of its bytes).
Tokens are raw bytes (vocab 256), whatever the encoding. Cached like
``stdlib`` (see :mod:`.corpus`) and rebuilt when the files change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .corpus import ByteCorpus, list_files, open_corpus

__all__ = ["text"]


def text(arg: Any = None, *, val_fraction: float = 0.05,
         suffixes: Sequence[str] | str | None = None, verify: bool = True) -> ByteCorpus:
    """The byte corpus of the file or directory ``arg`` (the PATH in ``text:PATH``)."""
    if arg in (None, ""):
        raise ValueError("data 'text' needs a path: write it as text:PATH (a file or a directory)")
    path = Path(str(arg)).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data 'text': path {str(path)!r} does not exist")
    path = path.resolve()
    if isinstance(suffixes, str):
        suffixes = [s.strip() for s in suffixes.split(",") if s.strip()]
    if path.is_dir():
        root, files = path, list_files(path, suffixes=suffixes)
        if not files:
            which = f" ending in {list(suffixes)}" if suffixes else ""
            raise ValueError(f"data 'text': directory {str(path)!r} contains no files{which}")
    else:
        root, files = path.parent, [path.name]
    if sum((root / f).stat().st_size for f in files) == 0:
        raise ValueError(f"data 'text': {str(path)!r} has no bytes ({len(files)} empty file(s))")
    return open_corpus("text", root, files,
                       val_fraction=val_fraction, verify=verify,
                       options={"path": str(path), "suffixes": list(suffixes or [])})
