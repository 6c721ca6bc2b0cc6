"""The ``nlframe`` command line (also ``python -m nlframe``).

Sub-commands are grouped by task: ``plugins`` (what is installed), and the
model commands ``validate``, ``spec``, ``train``, ``eval``, ``generate`` and
``bench`` added by their modules.
"""

from __future__ import annotations

import json
import sys
import warnings

import click

from . import __version__
from .hookspecs import KINDS
from .runtime import fix_mmap_threshold


def _load_registry():
    """The registry, with plugin load warnings printed as one line each on stderr;
    a registry error (e.g. a plugin name clash) becomes one ``Error:`` line, exit 1."""
    from .registry import PluginError, PluginLoadWarning, get_registry

    reg = error = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PluginLoadWarning)
        try:
            reg = get_registry()
        except PluginError as exc:
            error = exc
    for w in caught:
        if issubclass(w.category, PluginLoadWarning):
            click.echo(f"warning: {w.message}", err=True)
        else:
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if error is not None:
        raise click.ClickException(str(error))
    return reg


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="nlframe")
def main() -> None:
    """nlframe: Nested Learning models, levels and deep optimizers as plugins."""
    fix_mmap_threshold()  # keep the peak RSS of long scans near the live tensors


@main.group()
def plugins() -> None:
    """Inspect installed plugins."""


@plugins.command("list")
@click.option("--kind", type=click.Choice(KINDS), help="Only plugins of this kind.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of objects.")
def plugins_list(kind: str | None, as_json: bool) -> None:
    """List registered plugins: kind, name, distribution, version, description."""
    reg = _load_registry()
    entries = reg.entries(kind)
    if as_json:
        click.echo(json.dumps([e.as_dict() for e in entries], indent=2))
        return
    rows = [(e.kind, e.name, e.distribution, e.version, e.description) for e in entries]
    header = ("KIND", "NAME", "DISTRIBUTION", "VERSION", "DESCRIPTION")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    for r in [header, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(r[:4], widths)]
        click.echo("  ".join(cells) + "  " + r[4])


def _register_subcommands() -> None:
    """Attach the task commands that live in their own modules."""
    import importlib

    for module in ("nlframe.commands", "nlframe.commands.tokenizer"):
        try:
            importlib.import_module(module).register(main)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


_register_subcommands()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
