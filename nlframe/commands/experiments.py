"""``nlframe experiments list`` and ``nlframe experiments run``."""

from __future__ import annotations

import click


@click.group("experiments")
def experiments_group():
    """Small-scale reproductions of the papers' experiments (results page: docs/results.md)."""


@experiments_group.command("list")
def list_cmd():
    """The experiments, in page order."""
    from ..experiments import EXPERIMENTS, get_experiment

    for name in EXPERIMENTS:
        click.echo(f"{name:10s}  {get_experiment(name).TITLE}")


@experiments_group.command("run")
@click.argument("names", nargs=-1, required=True, metavar="NAME... | all")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Results directory (figures, results.json); e.g. docs/results.")
@click.option("--page", type=click.Path(dir_okay=False),
              help="Markdown page to write (default: OUT.md, e.g. docs/results.md).")
@click.option("--work", type=click.Path(file_okay=False),
              help="Training runs and cached measurements (default: OUT/.work).")
@click.option("--quick", is_flag=True, help="Toy sizes: check the pipeline in minutes.")
@click.option("--config-dir", type=click.Path(file_okay=False, exists=True),
              help="Directory of the experiment configurations (default: specs/experiments).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def run_cmd(names, out, page, work, quick, config_dir, device, no_progress):
    """Run the experiments NAME... (or all) and write the results page.

    Finished training runs and measurements are cached in WORK by their
    configuration, so a rerun (or a run after a crash) continues where it
    stopped; change a configuration and only what it touches runs again.
    """
    import torch

    from ..checkpoint import CheckpointError
    from ..cli import _load_registry
    from ..experiments import ExperimentError, run_experiments
    from ..rundir import RunDirError
    from ..spec import SpecError

    _load_registry()
    if device == "cuda" and not torch.cuda.is_available():
        raise click.ClickException("--device cuda requested but CUDA is not available")
    try:
        path = run_experiments(names, out, quick=quick, page=page, work=work,
                               config_dir=config_dir, device=device,
                               progress=not no_progress, echo=click.echo)
    except (ExperimentError, SpecError, CheckpointError, RunDirError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("interrupted: finished runs are cached; run the same command to continue",
                   err=True)
        raise SystemExit(130)
    click.echo(f"results page: {path}")


def register(main: click.Group) -> None:
    main.add_command(experiments_group)
