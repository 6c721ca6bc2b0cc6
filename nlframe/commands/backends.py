"""``nlframe backends list [--json]``: every scan backend, whether it runs here (and
why not), and which combinations of the scan contract it computes.

Each combination — memory, objective, optimizer, chunk size, read and write mode,
self targets — is probed with a tiny request built by
:func:`nlframe.scan.make_request` and the backend's own ``supports`` (nothing is
computed). A combination the contract itself rejects (e.g. ``self_target`` with a
memory whose key and value widths differ) is reported as ``invalid`` for every backend.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import click

DEFAULT_MEMORIES = ("linear", "mlp", "residual-mlp")
DEFAULT_OBJECTIVES = ("l2", "dot")
DEFAULT_OPTIMIZERS = ("momentum", "dgd", "sgd")
DEFAULT_CHUNKS = (1, 16)
MODES = [(read, write, self_target) for read in ("after_write", "chunk_start")
         for write in ("token", "chunk") for self_target in (False, True)]
_DIM = 4


def _probe(memory: str, objective: str, optimizer: str, chunk: int, read: str, write: str,
           self_target: bool) -> tuple[Any, str | None]:
    """``(request, None)`` or ``(None, why the contract rejects the combination)``."""
    import torch

    from ..scan import make_memory, make_objective, make_request, make_rule

    try:
        mem = make_memory(memory, _DIM, _DIM)
        obj, rule = make_objective(objective), make_rule(optimizer)
        q = torch.zeros(1, 1, 2, _DIM)
        request = make_request(q, q, q, memory=mem, objective=obj, rule=rule,
                               names={"memory": memory, "objective": objective,
                                      "optimizer": optimizer},
                               chunk_size=chunk, read=read, write=write, self_target=self_target)
    except (TypeError, ValueError) as exc:
        return None, str(exc)
    return request, None


def backend_table(memories=DEFAULT_MEMORIES, objectives=DEFAULT_OBJECTIVES,
                  optimizers=DEFAULT_OPTIMIZERS, chunks=DEFAULT_CHUNKS) -> list[dict]:
    """One dict per registered backend (highest priority first): ``name``,
    ``distribution``, ``priority``, ``available``, ``unavailable_reason``,
    ``description`` and ``combinations`` — one dict per probed combination with
    ``supported`` (bool) and ``reason`` (``None`` when supported; prefixed
    ``"invalid: "`` when the contract itself rejects the combination)."""
    from ..registry import get_registry

    reg = get_registry()
    combos = []
    for memory, objective, optimizer, chunk in itertools.product(memories, objectives,
                                                                 optimizers, chunks):
        for read, write, self_target in MODES:
            request, invalid = _probe(memory, objective, optimizer, chunk, read, write,
                                      self_target)
            combos.append(({"memory": memory, "objective": objective, "optimizer": optimizer,
                            "chunk_size": chunk, "read": read, "write": write,
                            "self_target": self_target}, request, invalid))
    out = []
    entries = sorted(reg.entries("backend"), key=lambda e: -getattr(e.obj, "priority", 0))
    for entry in entries:
        backend = entry.obj()
        why_not = backend.unavailable_reason()
        rows = []
        for combo, request, invalid in combos:
            if invalid is not None:
                reason = f"invalid: {invalid}"
            else:
                try:
                    reason = backend.supports(request)
                except Exception as exc:  # noqa: BLE001 - a plugin bug is shown, not raised
                    reason = f"supports() raised {type(exc).__name__}: {exc}"
            rows.append({**combo, "supported": reason is None, "reason": reason})
        out.append({"name": entry.name, "distribution": entry.distribution,
                    "priority": backend.priority, "available": why_not is None,
                    "unavailable_reason": why_not, "description": entry.description,
                    "combinations": rows})
    return out


def _mode_label(read: str, write: str, self_target: bool) -> str:
    return f"{'start' if read == 'chunk_start' else 'after'}/{write}{'/self' if self_target else ''}"


def format_table(backends: list[dict]) -> str:
    """Per backend: a header line and a matrix — rows memory/objective/optimizer/C,
    columns read/write(/self target) — of ``yes``, ``-`` (invalid for the contract) or
    a footnote number whose reason is listed below it."""
    lines: list[str] = []
    labels = [_mode_label(*m) for m in MODES]
    for b in backends:
        state = "available" if b["available"] else f"unavailable: {b['unavailable_reason']}"
        lines.append(f"{b['name']} (priority {b['priority']}, {b['distribution']}): {state}")
        if b["description"]:
            lines.append(f"  {b['description']}")
        notes: dict[str, int] = {}
        rows: dict[tuple, list[str]] = {}
        for c in b["combinations"]:
            key = (c["memory"], c["objective"], c["optimizer"], c["chunk_size"])
            reason = c["reason"]
            if c["supported"]:
                cell = "yes"
            elif reason.startswith("invalid: "):
                cell = "-"
            else:
                cell = f"({notes.setdefault(reason, len(notes) + 1)})"
            rows.setdefault(key, []).append(cell)
        head = ["memory", "objective", "optimizer", "C", *labels]
        body = [[m, o, r, str(ch), *cells] for (m, o, r, ch), cells in rows.items()]
        widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
        for row in [head, *body]:
            lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        for reason, n in notes.items():
            lines.append(f"  ({n}) {reason}")
        lines.append("")
    lines.append("columns: read (start = chunk_start, after = after_write) / write (token, "
                 "chunk) / self = self_target; '-': the scan contract rejects the combination")
    return "\n".join(lines)


@click.group()
def backends() -> None:
    """Scan backends: availability and supported combinations."""


@backends.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, one object per backend.")
@click.option("--memory", "memories", multiple=True, metavar="NAME",
              help=f"Memories to probe (repeatable; default {', '.join(DEFAULT_MEMORIES)}).")
@click.option("--objective", "objectives", multiple=True, metavar="NAME",
              help=f"Objectives to probe (default {', '.join(DEFAULT_OBJECTIVES)}).")
@click.option("--optimizer", "optimizers", multiple=True, metavar="NAME",
              help=f"Update rules to probe (default {', '.join(DEFAULT_OPTIMIZERS)}).")
@click.option("--chunk-size", "chunks", multiple=True, type=click.IntRange(min=1),
              help="Chunk sizes to probe (default 1 and 16).")
def backends_list(as_json: bool, memories: tuple[str, ...], objectives: tuple[str, ...],
                  optimizers: tuple[str, ...], chunks: tuple[int, ...]) -> None:
    """Every backend, available or not and why, and which combinations it supports."""
    from ..cli import _load_registry

    reg = _load_registry()
    for kind, names in (("memory", memories), ("objective", objectives),
                        ("optimizer", optimizers)):
        for name in names:
            if name not in reg.names(kind):
                raise click.BadParameter(f"unknown {kind} {name!r}; registered: "
                                         f"{', '.join(sorted(reg.names(kind)))}",
                                         param_hint=f"--{kind}")
    table = backend_table(memories or DEFAULT_MEMORIES, objectives or DEFAULT_OBJECTIVES,
                          optimizers or DEFAULT_OPTIMIZERS, chunks or DEFAULT_CHUNKS)
    click.echo(json.dumps(table, indent=2) if as_json else format_table(table))


def register(main: click.Group) -> None:
    main.add_command(backends)
