"""Atomic checkpoints that hold data only: ``DIR/checkpoint/`` = ``model.safetensors``,
``trainer.safetensors`` + ``trainer.json``, ``spec.toml``, ``meta.json``.

Nothing in a checkpoint is unpickled: tensors are safetensors, everything else
JSON or TOML. The trainer state (optimizer and scheduler state dicts, RNG
states, data position) is split by :func:`encode_tree` into its tensors, stored
in ``trainer.safetensors`` under flat keys, and a JSON tree that refers to them,
so it round-trips exactly (int dict keys and tuples included).

A checkpoint is written into ``DIR/checkpoint.tmp`` and swapped in with two
renames (``checkpoint → checkpoint.old``, ``checkpoint.tmp → checkpoint``), so a
crash at any moment leaves a complete checkpoint under one of those names;
:func:`find_checkpoint` picks it up. Every damaged file raises one
:class:`CheckpointError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = ["save_checkpoint", "load_checkpoint", "find_checkpoint", "CheckpointError",
           "encode_tree", "decode_tree"]

MODEL_FILE = "model.safetensors"
TRAINER_TENSORS = "trainer.safetensors"
TRAINER_JSON = "trainer.json"
SPEC_FILE = "spec.toml"
META_FILE = "meta.json"
LEGACY_TRAINER = "trainer.pt"  # nlframe 0.1 (a pickle): never read

_WEIGHTS = (MODEL_FILE, SPEC_FILE)  # what eval and generate need; meta.json is optional


class CheckpointError(RuntimeError):
    """A checkpoint directory that is missing, incomplete, damaged or does not match."""


# ------------------------------------------------------------------ trainer-state trees
def encode_tree(tree: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a state tree into JSON-ready data and its tensors.

    Tensors become ``{"$tensor": key}``, tuples ``{"$tuple": [...]}``, dicts with
    non-string keys ``{"$items": [[key, value], ...]}``; non-finite floats are
    kept by JSON's ``NaN``/``Infinity`` tokens. :func:`decode_tree` inverts it.
    """
    tensors: dict[str, torch.Tensor] = {}

    def enc(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = x.detach().cpu().contiguous()
            return {"$tensor": key}
        if isinstance(x, tuple):
            return {"$tuple": [enc(v) for v in x]}
        if isinstance(x, list):
            return [enc(v) for v in x]
        if isinstance(x, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in x):
                return {k: enc(v) for k, v in x.items()}
            return {"$items": [[enc(k), enc(v)] for k, v in x.items()]}
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"cannot store a {type(x).__name__} in a checkpoint (tensors, numbers, "
                        "strings, lists, tuples and dicts only)")

    return enc(tree), tensors


def decode_tree(data: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode_tree`; ``KeyError`` for a tensor key that is missing."""
    if isinstance(data, list):
        return [decode_tree(v, tensors) for v in data]
    if isinstance(data, dict):
        if set(data) == {"$tensor"}:
            return tensors[data["$tensor"]]
        if set(data) == {"$tuple"}:
            return tuple(decode_tree(v, tensors) for v in data["$tuple"])
        if set(data) == {"$items"}:
            return {_hashable(decode_tree(k, tensors)): decode_tree(v, tensors)
                    for k, v in data["$items"]}
        return {k: decode_tree(v, tensors) for k, v in data.items()}
    return data


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


# ---------------------------------------------------------------------------- writing
def _complete(path: Path, trainer: bool = True) -> bool:
    names = _WEIGHTS + ((TRAINER_JSON, TRAINER_TENSORS) if trainer else ())
    return all((path / f).is_file() for f in names)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(out_dir: str | Path, *, model: torch.nn.Module | None = None,
                    weights: dict[str, torch.Tensor] | None = None, trainer_state: dict[str, Any],
                    spec_toml: str, meta: dict[str, Any]) -> Path:
    """Write a checkpoint of ``model`` (or of the state dict ``weights``) and
    ``trainer_state`` atomically; returns its path."""
    if weights is None:
        if model is None:
            raise TypeError("save_checkpoint: pass model or weights")
        weights = model.state_dict()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final, tmp, old = out / "checkpoint", out / "checkpoint.tmp", out / "checkpoint.old"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    weights = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    save_file(_untie(weights), str(tmp / MODEL_FILE))
    tree, tensors = encode_tree(trainer_state)
    save_file(tensors, str(tmp / TRAINER_TENSORS))
    (tmp / TRAINER_JSON).write_text(json.dumps(tree))
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


# ---------------------------------------------------------------------------- reading
def find_checkpoint(run_dir: str | Path, *, trainer: bool = True) -> Path:
    """The newest complete checkpoint of ``run_dir`` (``checkpoint/``, else the
    ``checkpoint.old/`` a crash mid-swap left behind). ``trainer=False`` needs only
    the weights and spec (what ``eval`` and ``generate`` read; ``meta.json`` too when
    present)."""
    run = Path(run_dir)
    if not run.exists():
        raise CheckpointError(f"run directory {str(run)!r} does not exist")
    for name in ("checkpoint", "checkpoint.old"):
        if _complete(run / name, trainer):
            return run / name
    if _complete(run, trainer):  # a checkpoint directory given directly
        return run
    need = _WEIGHTS + ((TRAINER_JSON, TRAINER_TENSORS) if trainer else ())
    for name in ("checkpoint", "checkpoint.old", "."):
        if trainer and _complete(run / name, trainer=False) and (run / name / LEGACY_TRAINER).is_file():
            raise CheckpointError(f"{run / name / LEGACY_TRAINER}: an nlframe 0.1 trainer state "
                                  "(a pickle, which nlframe does not load: it could run code); "
                                  "this checkpoint cannot be resumed, but eval and generate read "
                                  "its weights")
    raise CheckpointError(f"no complete checkpoint in {str(run)!r} (expected "
                          f"{run / 'checkpoint'} with {', '.join(need)})")


def _damaged(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: {what}")


def _read_tensors(path: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _damaged(path, f"not a readable safetensors file ({detail}); the file is "
                             "damaged or truncated") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _damaged(path, "not UTF-8 text; the file is damaged") from None
    except OSError as exc:
        raise _damaged(path, f"cannot be read: {exc.strerror or exc}") from None


def _read_json(path: Path, expect: type = dict) -> Any:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise _damaged(path, f"not valid JSON ({exc.msg} at line {exc.lineno} column "
                             f"{exc.colno}); the file is damaged or truncated") from None
    if not isinstance(data, expect):
        raise _damaged(path, f"expected a JSON {expect.__name__}, found {type(data).__name__}")
    return data


def _read_trainer(path: Path) -> dict[str, Any]:
    tree = _read_json(path / TRAINER_JSON)
    tensors = _read_tensors(path / TRAINER_TENSORS, "cpu")
    try:
        state = decode_tree(tree, tensors)
    except KeyError as exc:
        raise _damaged(path / TRAINER_JSON, f"refers to tensor {exc} that "
                                            f"{TRAINER_TENSORS} does not hold") from None
    if not isinstance(state.get("step"), int):
        raise _damaged(path / TRAINER_JSON, "no integer 'step' in the trainer state")
    return state


def load_checkpoint(run_dir: str | Path, *, trainer: bool = True,
                    device: str | torch.device = "cpu") -> dict[str, Any]:
    """``{"path", "weights", "trainer", "spec_toml", "meta"}`` of the newest checkpoint.

    ``trainer=False`` reads only the weights, spec and meta (``{}`` when
    ``meta.json`` is absent; ``"trainer"`` is
    ``None``); weights are loaded onto ``device``.
    """
    path = find_checkpoint(run_dir, trainer=trainer)
    meta = _read_json(path / META_FILE) if (path / META_FILE).exists() else {}
    return {
        "path": path,
        "weights": _read_tensors(path / MODEL_FILE, device),
        "trainer": _read_trainer(path) if trainer else None,
        "spec_toml": _read_text(path / SPEC_FILE),
        "meta": meta,
    }

