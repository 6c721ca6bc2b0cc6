"""``nlframe bench NAME [ARGS...]``: run a benchmark of :mod:`nlframe.bench`."""

from __future__ import annotations

import importlib
import importlib.util

import click

from ..bench import BENCHMARKS


def _available() -> list[str]:
    return [b for b in BENCHMARKS if importlib.util.find_spec(f"nlframe.bench.{b}") is not None]


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("name", type=click.Choice([*BENCHMARKS, "all"]))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(name: str, args: tuple[str, ...]) -> None:
    """Run benchmark NAME (scan, optim, train, or all); ARGS go to the benchmark
    (``nlframe bench scan --help``)."""
    names = _available() if name == "all" else [name]
    if name != "all" and name not in _available():
        raise click.ClickException(f"benchmark {name!r} is not installed")
    rc = 0
    for n in names:
        click.echo(f"== nlframe bench {n}")
        rc |= importlib.import_module(f"nlframe.bench.{n}").main(list(args)) or 0
    raise SystemExit(rc)


def register(main: click.Group) -> None:
    main.add_command(bench)
