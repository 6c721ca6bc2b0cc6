"""``nlframe validate SPEC...`` and ``nlframe spec show SPEC``.

Spec problems are reported as one line per error, ``FILE: key.path: message``,
on stderr with exit status 2 — never a traceback.
"""

from __future__ import annotations

import click

EXIT_INVALID = 2


def _load(path: str):
    """``(spec, None)`` or ``(None, [error lines])`` for the spec file ``path``."""
    from ..spec import SpecError, load_spec

    try:
        return load_spec(path), None
    except SpecError as exc:
        return None, exc.lines(f"{path}: ")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [f"{path}: {exc}"]


def _count(spec, path: str) -> tuple[int | None, str | None]:
    """Parameter count, or an error line when a (valid) spec fails to build."""
    from ..build import count_parameters

    try:
        return count_parameters(spec), None
    except Exception as exc:  # noqa: BLE001 - a plugin bug must still not print a traceback
        return None, f"{path}: building the model failed: {type(exc).__name__}: {exc}"


@click.command("validate")
@click.argument("specs", nargs=-1, required=True, type=click.Path(dir_okay=False))
def validate(specs: tuple[str, ...]) -> None:
    """Check spec files without training: every key, type, plugin name and
    combination. Prints ``ok SPEC (N parameters)`` per valid file; exit 2 if any
    is invalid."""
    from ..cli import _load_registry

    _load_registry()
    failed = False
    for path in specs:
        spec, errors = _load(path)
        if errors:
            failed = True
            for line in errors:
                click.echo(line, err=True)
            continue
        n, error = _count(spec, path)
        if error:
            failed = True
            click.echo(error, err=True)
            continue
        click.echo(f"ok {path} ({n:,} parameters)")
    if failed:
        raise SystemExit(EXIT_INVALID)


@click.group("spec")
def spec_group() -> None:
    """Inspect spec files."""


@spec_group.command("show")
@click.argument("path", type=click.Path(dir_okay=False))
def show(path: str) -> None:
    """Print the resolved spec (every default filled in) as TOML, with its
    parameter count."""
    from ..cli import _load_registry
    from ..spec import dump_spec

    _load_registry()
    spec, errors = _load(path)
    if errors:
        for line in errors:
            click.echo(line, err=True)
        raise SystemExit(EXIT_INVALID)
    n, error = _count(spec, path)
    if error:
        click.echo(error, err=True)
        raise SystemExit(EXIT_INVALID)
    click.echo(f"# {path}: {n:,} parameters")
    click.echo(dump_spec(spec), nl=False)


def register(main: click.Group) -> None:
    main.add_command(validate)
    main.add_command(spec_group)
