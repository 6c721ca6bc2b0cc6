"""``nlframe bench NAME [ARGS...]``: run a benchmark of :mod:`nlframe.bench`."""

from __future__ import annotations

import importlib
import importlib.util

import click

from ..bench import BENCHMARKS


def _available() -> list[str]:
    return [b for b in BENCHMARKS if importlib.util.find_spec(f"nlframe.bench.{b}") is not None]


@click.command(add_help_option=False,
               context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("name", required=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def bench(ctx: click.Context, name: str | None, args: tuple[str, ...]) -> None:
    """Run benchmark NAME (scan, optim, train, model, or all); ARGS go to the benchmark
    (``nlframe bench scan --help`` shows its options)."""
    if name in (None, "-h", "--help"):
        click.echo(ctx.get_help())
        return
    if name not in (*BENCHMARKS, "all"):
        raise click.BadParameter(f"{name!r} is not one of {', '.join((*BENCHMARKS, 'all'))}",
                                 param_hint="NAME")
    names = _available() if name == "all" else [name]
    if name != "all" and name not in _available():
        raise click.ClickException(f"benchmark {name!r} is not installed")
    rc = 0
    for n in names:
        if name == "all":  # a heading between benchmarks; a single one keeps stdout its own
            click.echo(f"== nlframe bench {n}")
        rc |= importlib.import_module(f"nlframe.bench.{n}").main(list(args)) or 0
    raise SystemExit(rc)


def register(main: click.Group) -> None:
    main.add_command(bench)
