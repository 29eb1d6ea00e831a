"""``liverlesion``: one command line for the project, in groups of commands (one module each).

- ``runs``: ``run``, ``compare``, ``train-segmenter``, ``retrain``, ``export``, ``profile``
- ``data``: ``data``, ``import``, ``generate``
- ``predict``: ``predict``, ``predict-batch``
- ``evaluate``: ``evaluate`` (a cohort's automatic segmentation against its reference masks)
- ``registry``: ``models``, ``promote``, ``rollback``, ``audit``
- ``team``: ``server`` (the team MLflow server), ``stack`` (the Kubeflow stack), ``schedule``

A command parses its options, calls the ops or domain module that does the work, and reports; ``common``
holds the shared options and the one error path. ``liverlesion --help`` lists them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from liverlesion_ops.cli import common

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    help=(
        "Liver lesion classification (colorectal metastasis vs benign cyst) as a reproducible pipeline: "
        "ingest -> segment -> extract_patches -> validate -> split -> train -> evaluate -> register. "
        "Run inside the project's folder (the one holding data.dvc), or name it with --project. "
        "Every command's own --help has examples. " + common.EXIT_CODES_HELP
    ),
)


def _version(value: bool) -> None:
    if value:
        from liverlesion import __version__

        typer.echo(f"liverlesion {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
    project: Annotated[
        Path | None,
        typer.Option(
            "--project",
            envvar="LIVERLESION_PROJECT",
            help="the project's folder (holding data.dvc and configs/); default: the working directory or the "
            "nearest parent holding data.dvc",
        ),
    ] = None,
) -> None:
    """Liver lesion classification as a reproducible pipeline."""
    if project is not None:
        import os

        os.environ["LIVERLESION_PROJECT"] = str(project.resolve())


def _register_commands() -> None:
    from liverlesion_ops.cli import data, evaluate, predict, registry, runs, team

    for group in (runs, data, predict, evaluate, registry, team):
        group.register(app)


_register_commands()


def main() -> None:
    """The console script: the command, then the process ends without tearing down its modules
    (``common.leave``). A bug's traceback leaves the ordinary way."""
    try:
        common.main(app)
    except SystemExit as done:
        common.leave(done.code)
