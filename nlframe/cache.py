"""The user cache directory and atomic file writes.

``cache_dir("corpus")`` is ``<user cache dir>/nlframe/corpus`` (via
``platformdirs``), or ``$NLFRAME_CACHE_DIR/corpus`` when that variable is set
(tests point it at a temporary directory). ``atomic_write`` writes a file so
that a reader sees either the old content or the complete new one, never a
partial file: it writes a temporary file in the same directory, flushes it to
disk and renames it over the target.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

__all__ = ["cache_dir", "atomic_write", "atomic_write_text"]

ENV_VAR = "NLFRAME_CACHE_DIR"


def cache_dir(*parts: str, create: bool = True) -> Path:
    """``<cache root>/<parts...>``; the root is ``$NLFRAME_CACHE_DIR`` or the user cache dir."""
    override = os.environ.get(ENV_VAR)
    if override:
        root = Path(override).expanduser()
    else:
        import platformdirs

        root = Path(platformdirs.user_cache_dir("nlframe", appauthor=False))
    path = root.joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success rename it to ``path``.

    If the body raises, the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        kwargs = {} if "b" in mode else {"encoding": "utf-8"}
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)
