"""A run directory: its lock, its overwrite policy and its ``metrics.jsonl``.

``nlframe train`` holds an exclusive lock on ``OUT/.lock`` while it trains
into ``OUT`` (an OS file lock, released when the process ends, even by a
crash), so two processes never write one run. A directory that already holds
a run is only reused with ``resume`` (continue it) or ``overwrite`` (delete it
first); anything else is refused before a model is built.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

__all__ = ["RunDir", "RunDirError"]

LOCK_FILE = ".lock"
METRICS_FILE = "metrics.jsonl"
RUN_ENTRIES = ("checkpoint", "checkpoint.old", "checkpoint.tmp", METRICS_FILE, "spec.toml", "tb")


class RunDirError(RuntimeError):
    """A run directory that cannot be used as asked (in use, not writable, holds a run)."""


def _try_lock(fh: Any) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        import msvcrt

        try:
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


class RunDir:
    """The directory ``path`` of one training run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock: Any = None

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    def holds_run(self) -> bool:
        """Whether a previous run wrote here (checkpoint, metrics, spec or logs)."""
        return any((self.path / name).exists() for name in RUN_ENTRIES)

    def open(self, *, resume: bool = False, overwrite: bool = False, lock: bool = True) -> "RunDir":
        """Create the directory, take its lock (when ``lock``) and apply the policy.

        Raises :class:`RunDirError` when the directory cannot be created or
        written, another process holds it, or it holds a run and neither
        ``resume`` nor ``overwrite`` is set.
        """
        if resume and overwrite:
            raise RunDirError("resume and overwrite exclude each other")
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"run directory {str(self.path)!r} exists and is not a directory")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fh = open(self.path / LOCK_FILE, "a+")
        except OSError as exc:
            raise RunDirError(f"cannot write the run directory {str(self.path)!r}: "
                              f"{exc.strerror or exc}") from None
        if lock:
            if not _try_lock(fh):
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                fh.close()
                if holder.endswith(f"(pid {os.getpid()})"):
                    raise RunDirError(f"run directory {str(self.path)!r} is held by an earlier "
                                      "Trainer of this process: call its close() (or use "
                                      "`with Trainer(...) as t:`) before opening another")
                raise RunDirError(f"run directory {str(self.path)!r} is in use by {holder}; "
                                  "wait for it to finish or choose another --out")
            fh.seek(0)
            fh.truncate()
            fh.write(f"nlframe train (pid {os.getpid()})\n")
            fh.flush()
            self._lock = fh
        else:
            fh.close()
        if self.holds_run() and not resume:
            if not overwrite:
                self.close()
                raise RunDirError(f"run directory {str(self.path)!r} already holds a run; pass "
                                  "--resume to continue it or --overwrite to replace it")
            if lock:
                self.clear()
        return self

    def clear(self) -> None:
        """Delete the entries of a previous run (not the lock)."""
        for name in RUN_ENTRIES:
            p = self.path / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()

    def close(self) -> None:
        """Release the lock."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- metrics.jsonl ----------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line (written whole, then flushed)."""
        with open(self.metrics, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def truncate_metrics(self, step: int, warn: Callable[[str], None] | None = None) -> None:
        """Keep the records up to ``step`` (those a resume from that checkpoint
        repeats are dropped); lines that are not JSON records — a line torn by a
        crash mid-write — are dropped and reported through ``warn``."""
        if not self.metrics.exists():
            return
        keep, torn = [], 0
        for line in self.metrics.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                ok = isinstance(record, dict) and isinstance(record.get("step"), int)
            except json.JSONDecodeError:
                ok = False
            if not ok:
                torn += 1
            elif record["step"] <= step:
                keep.append(line)
        if torn and warn is not None:
            warn(f"{self.metrics}: dropped {torn} damaged line(s) (a write torn by a crash)")
        self.metrics.write_text("".join(line + "\n" for line in keep))
