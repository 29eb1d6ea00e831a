"""Commands on the model registry: ``models``, ``promote``, ``rollback``, ``audit``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from liverlesion_ops.cli.common import (
    DEFAULT_PROFILE,
    JsonOption,
    ModelOption,
    ProfileOption,
    ReasonOption,
    json_output,
    load_profile,
    print_json,
    say,
    setup,
)

HELP_PANEL = "Registry"
ExperimentOption = Annotated[
    str | None,
    typer.Option("--experiment", help="MLflow experiment of the decision's run (default: the profile's)"),
]


def register(app: typer.Typer) -> None:
    for command in (models, promote, rollback, audit):
        app.command(name=command.__name__, rich_help_panel=HELP_PANEL)(command)


def _model_and_experiment(profile: str, model: str | None, experiment: str | None = "") -> tuple[str, str]:
    """The model and experiment given, else the profile's (read only when one is not given)."""
    if model is not None and experiment is not None:
        return model, experiment
    config = load_profile(profile, keras_backend=False)
    return model or config.register.model_name, experiment or config.register.experiment


def models(model: ModelOption = None, profile: ProfileOption = DEFAULT_PROFILE, as_json: JsonOption = False) -> None:
    """List the registered versions of a model with their aliases, metrics and lineage.

    Examples: `liverlesion models`; `liverlesion models --model liver-lesion-classifier --json`.
    """
    from liverlesion_ops.registry.store import list_versions, registry_client

    setup()
    name, _ = _model_and_experiment(profile, model)
    with json_output(as_json):
        versions = list_versions(registry_client(), name)
    if as_json:
        print_json({"model_name": name, "versions": versions})
        return
    say(f"{name}: {len(versions)} version(s)")
    for entry in versions:
        tags = entry["tags"]
        metrics = ", ".join(
            f"{key.removeprefix('metric.')} {float(value):.3f}"
            for key, value in sorted(tags.items())
            if key in ("metric.accuracy", "metric.roc_auc", "metric.recall", "metric.specificity")
        )
        aliases = f" [{', '.join(entry['aliases'])}]" if entry["aliases"] else ""
        say(
            f"  v{entry['version']}{aliases}: {tags.get('decision', '?')}; {metrics or 'no metrics'}; data "
            f"{tags.get('data_version', '?')[:12]}, profile {tags.get('profile', '?')}, "
            f"run {tags.get('zenml_run_name', '?')}"
        )
    say("  (--json: every tag of every version)")


def _print_decision(result: dict[str, Any]) -> None:
    aliases = ", ".join(f"{alias} v{v}" for alias, v in sorted(result["aliases"].items()))
    if result["job"] == "promote":
        was = f"v{result['previous_champion']}" if result["previous_champion"] else "none"
        say(
            f"promoted v{result['version']} to champion (was {was}) by {result['by']} "
            f"at {result['at']}: {result['reason']}\n  aliases: {aliases}"
        )
    else:
        say(
            f"rolled back: champion v{result['rolled_back']} -> v{result['version']} by {result['by']} at "
            f"{result['at']}: {result['reason']}\n  aliases: {aliases}"
        )


def promote(
    version: Annotated[str, typer.Argument(help="the registered version to make champion (3 or v3)")],
    reason: ReasonOption,
    model: ModelOption = None,
    experiment: ExperimentOption = None,
    profile: ProfileOption = DEFAULT_PROFILE,
    as_json: JsonOption = False,
) -> None:
    """Make a version the champion by hand; the former champion becomes previous_champion.

    Recorded on the versions (decision, reason, by, at) and as an MLflow run (job=promote); serialised
    with every other registry decision by a lock, so two racing promotions leave exactly one champion.
    Example: `liverlesion promote 3 --reason "validated on the March cohort"`.
    """
    from liverlesion_ops.registry.manual import promote as decide

    setup()
    name, experiment = _model_and_experiment(profile, model, experiment)
    with json_output(as_json):
        result = decide(name, version.removeprefix("v"), reason, experiment)
    print_json(result) if as_json else _print_decision(result)


def rollback(
    reason: ReasonOption,
    model: ModelOption = None,
    experiment: ExperimentOption = None,
    profile: ProfileOption = DEFAULT_PROFILE,
    as_json: JsonOption = False,
) -> None:
    """Give the champion alias back to previous_champion (which then names the version rolled back).

    Recorded like `promote` (job=rollback). Example: `liverlesion rollback --reason "false negatives on ward 3"`.
    """
    from liverlesion_ops.registry.manual import rollback as decide

    setup()
    name, experiment = _model_and_experiment(profile, model, experiment)
    with json_output(as_json):
        result = decide(name, reason, experiment)
    print_json(result) if as_json else _print_decision(result)


def audit(
    ref: Annotated[
        str | None, typer.Argument(help="a version (3, v3) or an alias (@champion); default @champion")
    ] = None,
    model: ModelOption = None,
    restore: Annotated[
        Path | None,
        typer.Option(
            "--restore",
            help="materialise the version's exact data in this new folder (from the DVC cache or remote) and "
            "check its hash",
        ),
    ] = None,
    profile: ProfileOption = DEFAULT_PROFILE,
    as_json: JsonOption = False,
) -> None:
    """The lineage of a model version: data version (and whether DVC still holds it), code, settings,
    runs, the patients of each split; then the workspace's data held against it.

    Examples: `liverlesion audit`; `liverlesion audit @previous_champion --json`;
    `liverlesion audit 3 --restore /tmp/v3-data`. Exit codes: 0 done; 1 --restore failed (data gone,
    or a hash mismatch); 2 no such version or alias.
    """
    from liverlesion_ops import project
    from liverlesion_ops.audit import audit as build
    from liverlesion_ops.audit import render, restore_data

    setup()
    name, _ = _model_and_experiment(profile, model)
    root = project.project_root()
    with json_output(as_json):
        report = build(name, ref, root)
        if restore is not None:
            report["restored"] = restore_data(report, root, restore)
    if as_json:
        print_json(report)
        return
    say(render(report))
    if restore is not None:
        say(
            f"  restored: {restore} holds exactly data version {report['restored']['verified_version']} "
            "(every file's md5 and the listing's hash checked)"
        )
