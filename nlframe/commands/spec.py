"""``nlframe validate SPEC... [KEY.PATH=VALUE...]`` and ``nlframe spec show SPEC [KEY.PATH=VALUE...]``.

Arguments containing ``=`` (that are not existing files) are overrides applied
to every spec (``model.dim=256``, ``model.blocks[0].heads=4``, ``train.lr=1e-3``).
Spec problems are reported as one line per error, ``FILE: key.path: message``,
on stderr with exit status 2 — never a traceback.
"""

from __future__ import annotations

import os

import click

EXIT_INVALID = 2


def _split(args: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """``(spec files, overrides)``: an argument with ``=`` that is not a file is an override."""
    specs, overrides = [], []
    for arg in args:
        (overrides if "=" in arg and not os.path.isfile(arg) else specs).append(arg)
    if not specs:
        raise click.UsageError("give at least one spec file (KEY.PATH=VALUE arguments are "
                               "overrides)")
    return specs, overrides


def _load(path: str, overrides: list[str]):
    """``(spec, None)`` or ``(None, [error lines])`` for the spec file ``path``."""
    from ..spec import SpecError, load_spec

    try:
        return load_spec(path, overrides=overrides), None
    except SpecError as exc:
        return None, exc.lines(f"{path}: ")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"{path}: {exc}"]


def _estimate(spec, path: str) -> tuple[dict | None, str | None]:
    """:func:`~nlframe.build.estimate_training_memory`, or an error line when a
    (valid) spec fails to build."""
    from ..build import estimate_training_memory

    try:
        return estimate_training_memory(spec), None
    except Exception as exc:  # noqa: BLE001 - a plugin bug must still not print a traceback
        return None, f"{path}: building the model failed: {type(exc).__name__}: {exc}"


def _summary(est: dict) -> str:
    from ..build import gb_text

    return (f"{est['parameters']:,} parameters, ~{gb_text(est['total_bytes'])} GB to train at "
            f"{est['batch_size']}x{est['seq_len']}")


def _too_large(spec, est: dict, path: str) -> str | None:
    """An error line when the estimate exceeds the memory of this machine."""
    from ..build import too_large

    message = too_large(spec, est)
    return f"{path}: {message}" if message else None


@click.command("validate")
@click.argument("args", nargs=-1, required=True, metavar="SPEC... [KEY.PATH=VALUE]...")
def validate(args: tuple[str, ...]) -> None:
    """Check spec files without training: every key, type, plugin name and
    combination, and whether training fits in this machine's memory. Prints
    ``ok SPEC (N parameters, ~X GB to train at BxT)`` per valid file; exit 2 if
    any is invalid or too large. KEY.PATH=VALUE arguments override values of
    every spec (``model.dim=256``)."""
    from ..cli import _load_registry

    _load_registry()
    specs, overrides = _split(args)
    failed = False
    for path in specs:
        spec, errors = _load(path, overrides)
        if not errors:
            est, error = _estimate(spec, path)
            error = error or _too_large(spec, est, path)
            errors = [error] if error else []
        if errors:
            failed = True
            for line in errors:
                click.echo(line, err=True)
            continue
        click.echo(f"ok {path} ({_summary(est)})")
    if failed:
        raise SystemExit(EXIT_INVALID)


@click.group("spec")
def spec_group() -> None:
    """Inspect spec files."""


@spec_group.command("show")
@click.argument("path", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1, metavar="[KEY.PATH=VALUE]...")
def show(path: str, overrides: tuple[str, ...]) -> None:
    """Print the resolved spec (every default filled in, overrides applied) as
    TOML, after a comment with its parameter count and training-memory estimate."""
    from ..cli import _load_registry
    from ..spec import dump_spec

    _load_registry()
    spec, errors = _load(path, list(overrides))
    est = None
    if not errors:
        est, error = _estimate(spec, path)
        errors = [error] if error else []
    if errors:
        for line in errors:
            click.echo(line, err=True)
        raise SystemExit(EXIT_INVALID)
    click.echo(f"# {path}: {_summary(est)}")
    if overrides:
        click.echo(f"# overrides: {' '.join(overrides)}")
    click.echo(dump_spec(spec), nl=False)


def register(main: click.Group) -> None:
    main.add_command(validate)
    main.add_command(spec_group)
