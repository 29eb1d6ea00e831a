"""Commands for the data: ``data`` (the project's DVC-tracked cohort), ``import`` (real CT in), ``generate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from liverlesion_ops.cli.common import (
    DEFAULT_PROFILE,
    JsonOption,
    ProfileOption,
    SetOption,
    fail,
    json_output,
    load_profile,
    print_json,
    say,
    setup,
    warn,
)

HELP_PANEL = "Data"
LAYOUTS = "manifest, lits, msd, dicom-seg, crlm, ircadb, or cohort (a cohort folder of new cases, e.g. with --append)"


def register(app: typer.Typer) -> None:
    app.command(name="data", rich_help_panel=HELP_PANEL)(data)
    app.command(name="import", rich_help_panel=HELP_PANEL)(import_)
    app.command(name="generate", rich_help_panel=HELP_PANEL)(generate)


def data(
    profile: ProfileOption = DEFAULT_PROFILE,
    overrides: SetOption = None,
    regenerate: Annotated[
        bool, typer.Option("--regenerate", help="replace data/ by a cohort generated from the profile's seed")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Restore (DVC) or regenerate (the profile's cohort seed) the cohort in data/, version it and push it to the
    DVC remote.

    Examples: `liverlesion data`; `liverlesion data --regenerate` (after changing the generator).
    """
    from liverlesion_ops import runs

    setup(tracking=False)
    config = load_profile(profile, overrides, keras_backend=False)
    # restoring or replacing data/ under a run that reads it would break the run and its recorded lineage
    with json_output(as_json), runs.training_lock(f"liverlesion data --profile {config.name}"):
        version = runs.cohort(config, regenerate=regenerate)
    if as_json:
        print_json({"version": version.hash, "source": version.source, "path": str(version.path)})
        return
    say(version.describe())


def _parse_name_map(pairs: list[str] | None) -> dict[str, str] | None:
    if not pairs:
        return None
    name_map = {}
    for pair in pairs:
        if "=" not in pair:
            raise fail(f"--map {pair!r}: expected PATTERN=TYPE, e.g. 'livertumor*=metastasis'")
        pattern, kind = pair.split("=", 1)
        name_map[pattern.strip()] = kind.strip()
    return name_map


def import_(
    source: Annotated[
        Path, typer.Argument(help="the source: a folder (lits, msd, dicom-seg, crlm, ircadb, cohort) or a manifest CSV")
    ],
    layout: Annotated[str, typer.Option("--layout", help=LAYOUTS)],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="the cohort folder to write (default: the project's data/, then versioned with DVC)"
        ),
    ] = None,
    types: Annotated[
        Path | None, typer.Option("--types", help="lesion types table: case, lesion, type (cyst or metastasis)")
    ] = None,
    default_type: Annotated[
        str | None, typer.Option("--default-type", help="type of every lesion the table does not type")
    ] = None,
    name_map: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            metavar="PATTERN=TYPE",
            help="structure/segment name map (TYPE: cyst, metastasis, ignore); replaces the layout's",
        ),
    ] = None,
    root: Annotated[
        Path | None, typer.Option("--root", help="manifest layout: the data root its paths are relative to")
    ] = None,
    append: Annotated[bool, typer.Option("--append", help="add the cases to the cohort already there")] = False,
    replace: Annotated[
        bool, typer.Option("--replace", help="replace the cohort there (data/: its version stays in DVC)")
    ] = False,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="import the good cases and list the refused ones, instead of none")
    ] = False,
    source_map: Annotated[
        Path | None,
        typer.Option(
            "--source-map",
            help="write which source case each message's 'source case N' is (its folder, pseudonyms, structure "
            "names) to this CSV, owner-only; outside the cohort and the project",
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=1,
            help="cases read and written at once, each held in memory until written (default: one per core; the "
            "cohort written does not depend on it)",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Convert real CT (DICOM, DICOM-SEG, NIfTI; public dataset layouts) into a de-identified cohort folder.

    Needs LIVERLESION_PSEUDONYM_SECRET (patient keys are keyed-hash pseudonyms). Only voxels and
    geometry are kept; no name, id, date, UID or source path is written. Importing into data/
    versions it with DVC. The layouts and the cohort folder: docs/data.md. Examples:
    `liverlesion import /data/3Dircadb1 --layout ircadb`;
    `liverlesion import /data/lits --layout lits --types lits_types.csv --out /cohorts/lits`.
    """
    from liverlesion.progress import progress_printer
    from liverlesion_ops.importing import import_cases

    if out is None:
        setup(tracking=False)
    with json_output(as_json):
        summary = import_cases(
            source,
            layout,
            out,
            types=types,
            default_type=default_type,
            name_map=_parse_name_map(name_map),
            root=root,
            append=append,
            replace=replace,
            skip_bad=skip_bad,
            progress=progress_printer("import"),
            source_map=source_map,
            workers=workers,
        )
    if as_json:
        print_json(summary)
        return
    say(
        f"imported {summary['cases']} case(s), {summary['lesions']} lesion(s) into {summary['out']}"
        + (f" — DVC version {summary['data_version']} (commit data.dvc)" if "data_version" in summary else "")
    )
    for line in summary["notes"]:
        say(f"  note: {line}")
    for line in summary["refused"]:
        warn(f"refused: {line}")


def generate(
    out: Annotated[Path, typer.Argument(help="an empty or new folder")],
    profile: ProfileOption = DEFAULT_PROFILE,
    n_patients: Annotated[
        int | None, typer.Option("--n-patients", help="patients (default: the profile's cohort.n_patients)")
    ] = None,
    n_lesions: Annotated[
        int | None, typer.Option("--n-lesions", help="lesions (default: the profile's cohort.n_lesions)")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="the seed (default: the profile's cohort.seed)")] = None,
    workers: Annotated[
        int, typer.Option("--workers", help="cases rendered at once (the bytes written do not depend on it)")
    ] = 2,
    as_json: JsonOption = False,
) -> None:
    """Write a synthetic phantom cohort (NIfTI CT in HU + lesion masks + cases.csv) to OUT: the profile's
    cohort section, with the counts and seed given here.

    Example: `liverlesion generate /tmp/cohort --n-patients 8 --n-lesions 24`.
    """
    from pydantic import ValidationError

    from liverlesion.phantom import generate_cohort
    from liverlesion.progress import progress_printer

    setup(tracking=False)
    cohort = load_profile(profile, keras_backend=False).cohort
    given = {"n_patients": n_patients, "n_lesions": n_lesions, "seed": seed}
    try:
        spec = cohort.model_validate({**cohort.model_dump(), **{k: v for k, v in given.items() if v is not None}})
    except ValidationError as err:
        raise fail("; ".join(f"--{'-'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())) from None
    with json_output(as_json):
        try:
            generate_cohort(spec, out, progress=progress_printer("generate"), workers=workers)
        except ValueError as err:  # a folder that holds something already
            raise fail(str(err)) from None
    if as_json:
        print_json({"path": str(out), **spec.model_dump(mode="json")})
        return
    say(f"wrote {spec.n_patients} cases with {spec.n_lesions} lesions to {out}")
