"""Atomic checkpoints: ``DIR/checkpoint/`` = ``model.safetensors`` + ``trainer.pt`` + ``spec.toml``.

A checkpoint is written into ``DIR/checkpoint.tmp`` and swapped in with two
renames (``checkpoint → checkpoint.old``, ``checkpoint.tmp → checkpoint``), so a
crash at any moment leaves a complete checkpoint under one of those names;
:func:`find_checkpoint` picks it up.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = ["save_checkpoint", "load_checkpoint", "find_checkpoint", "CheckpointError"]

MODEL_FILE = "model.safetensors"
TRAINER_FILE = "trainer.pt"
SPEC_FILE = "spec.toml"
META_FILE = "meta.json"


class CheckpointError(RuntimeError):
    """A checkpoint directory that is missing, incomplete or does not match."""


def _complete(path: Path) -> bool:
    return all((path / f).is_file() for f in (MODEL_FILE, TRAINER_FILE, SPEC_FILE, META_FILE))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(out_dir: str | Path, *, model: torch.nn.Module, trainer_state: dict[str, Any],
                    spec_toml: str, meta: dict[str, Any]) -> Path:
    """Write a checkpoint of ``model`` and ``trainer_state`` atomically; returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final, tmp, old = out / "checkpoint", out / "checkpoint.tmp", out / "checkpoint.old"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(_untie(weights), str(tmp / MODEL_FILE))
    torch.save(trainer_state, tmp / TRAINER_FILE)
    (tmp / SPEC_FILE).write_text(spec_toml)
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync_dir(out)
    if old.exists():
        shutil.rmtree(old)
    return final


def _untie(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage (tied embeddings): store copies."""
    seen: dict[int, str] = {}
    out = {}
    for k, v in weights.items():
        key = v.untyped_storage().data_ptr()
        out[k] = v.clone() if key in seen else v
        seen.setdefault(key, k)
    return out


def find_checkpoint(run_dir: str | Path) -> Path:
    """The newest complete checkpoint of ``run_dir`` (``checkpoint/``, else the
    ``checkpoint.old/`` a crash mid-swap left behind)."""
    run = Path(run_dir)
    if not run.exists():
        raise CheckpointError(f"run directory {str(run)!r} does not exist")
    for name in ("checkpoint", "checkpoint.old"):
        if _complete(run / name):
            return run / name
    if _complete(run):  # a checkpoint directory given directly
        return run
    raise CheckpointError(f"no complete checkpoint in {str(run)!r} (expected "
                          f"{run / 'checkpoint'} with {MODEL_FILE}, {TRAINER_FILE}, {SPEC_FILE})")


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """``{"path", "weights", "trainer", "spec_toml", "meta"}`` of the newest checkpoint."""
    path = find_checkpoint(run_dir)
    return {
        "path": path,
        "weights": load_file(str(path / MODEL_FILE)),
        "trainer": torch.load(path / TRAINER_FILE, weights_only=False),
        "spec_toml": (path / SPEC_FILE).read_text(),
        "meta": json.loads((path / META_FILE).read_text()),
    }
