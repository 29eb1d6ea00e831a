"""``liverlesion``: one command line for the pipeline. See ``liverlesion --help``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help=(
        "Liver lesion classification (colorectal metastasis vs benign cyst) as a reproducible pipeline:\n\n"
        "ingest -> segment -> extract_patches -> validate -> split -> train -> evaluate -> register\n\n"
        "Examples:\n\n"
        "  liverlesion run                   # quick profile, default cohort\n\n"
        "  liverlesion run --profile paper   # the paper's protocol (GPU)\n\n"
        "  liverlesion run --set train.epochs=2 --no-cache\n\n"
        "  liverlesion compare               # Table 2: five models side by side\n\n"
        "  liverlesion export -p paper p.npz # patches for bench/train_gpu.py\n\n"
        "  liverlesion data                  # restore/regenerate data/ (DVC)\n\n"
        "  liverlesion models                # versions, aliases, lineage\n\n"
        "  liverlesion generate /tmp/cohort --n-patients 8 --n-lesions 24"
    ),
)


def _parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``train.epochs=2`` -> ``{"train": {"epochs": 2}}`` (values parsed as YAML)."""
    import yaml

    result: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise typer.BadParameter(f"{pair!r}: expected KEY=VALUE, e.g. train.epochs=2")
        key, value = pair.split("=", 1)
        node = result
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return result


def _environment() -> dict[str, str]:
    """Export the state locations, or stop with the reason (e.g. not inside the project)."""
    from liverlesion import paths

    try:
        return paths.configure_environment()
    except FileNotFoundError as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(2) from None


def _load(profile: str, overrides: list[str]):
    from liverlesion.config import ConfigError, load_profile

    try:
        return load_profile(profile, _parse_overrides(overrides))
    except ConfigError as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(2) from None


def _prepare_data(profile, regenerate: bool = False):
    from liverlesion import paths
    from liverlesion.datastore import DataStoreError, prepare_data
    from liverlesion.progress import progress_printer

    try:
        version = prepare_data(
            paths.project_root(), profile.cohort, paths.dvc_remote(), progress_printer("generate"), regenerate
        )
    except DataStoreError as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(version.describe())
    return version


ProfileOption = Annotated[str, typer.Option("--profile", "-p", help="profile name in configs/ or a YAML path")]
SetOption = Annotated[list[str], typer.Option("--set", help="override a setting, e.g. --set train.epochs=2")]


@app.command()
def run(
    profile: ProfileOption = "quick",
    overrides: SetOption = [],  # noqa: B006 (typer needs a literal default)
    no_cache: Annotated[bool, typer.Option("--no-cache", help="re-run every step instead of reusing cached ones")] = False,
) -> None:
    """Run the whole training DAG and register the model in MLflow.

    Examples: `liverlesion run`; `liverlesion run --profile paper`; `liverlesion run --set train.epochs=1`.
    """
    env = _environment()
    config = _load(profile, overrides)
    _check_weights([("train.weights", config.train.weights, config.train.backbone)])
    version = _prepare_data(config)
    started = time.perf_counter()
    pipeline_run = _run_pipeline(
        "training_pipeline", no_cache, data_dir=str(version.path), data_version=version.hash, profile=config,
        profile_config=config.model_dump(mode="json"),
    )
    _print_summary(pipeline_run, time.perf_counter() - started, env)


def _check_weights(entries: list[tuple[str, str | None, str]], hint: str = "") -> None:
    """Stop before any work if pre-trained weights are asked for but absent (they cannot be downloaded)."""
    from liverlesion.model import WeightsNotFoundError, resolve_weights

    problems = []
    for what, weights, backbone in entries:
        try:
            resolve_weights(weights, backbone)
        except WeightsNotFoundError as err:
            problems.append(f"{what}: {err}")
    if problems:
        typer.secho("error: " + "\n       ".join(problems + ([hint] if hint else [])), fg="red", err=True)
        raise typer.Exit(2)


def _run_pipeline(name: str, no_cache: bool, **parameters):
    """Run the ZenML pipeline ``pipelines.<name>``; on failure name the failed step(s) and exit 1."""
    from liverlesion import paths

    code = paths.code_root()
    sys.path.insert(0, str(code))
    from zenml.client import Client
    from zenml.enums import ExecutionStatus
    from zenml.utils import source_utils

    source_utils.set_custom_source_root(str(code))
    import pipelines

    try:
        pipeline_run = getattr(pipelines, name).with_options(enable_cache=not no_cache)(**parameters)
    except Exception as err:  # the step's own error and log were printed above by ZenML
        last = Client().get_pipeline(name).last_run
        failed = [step for step, s in last.steps.items() if s.status == ExecutionStatus.FAILED]
        typer.secho(f"\npipeline run {last.name} failed in step(s) {', '.join(failed) or '?'}: {err}", fg="red", err=True)
        report = paths.reports_dir() / last.name / "validation.md"
        if "validate" in failed and report.exists():
            typer.secho(f"nothing was trained or registered; the validation report: {report}", fg="red", err=True)
        raise typer.Exit(1) from None
    return Client().get_pipeline_run(pipeline_run.id)


def _print_summary(pipeline_run, elapsed: float, env: dict[str, str]) -> None:
    """Where to look after a run: the model version, the test metrics, reports, UIs."""
    from zenml.enums import ExecutionStatus

    step = pipeline_run.steps["register"]
    registration = step.outputs["registration"][0].load()
    evaluation = pipeline_run.steps["evaluate"].outputs["test_metrics"][0].load()
    cached = [name for name, s in pipeline_run.steps.items() if s.status == ExecutionStatus.CACHED]
    bin_dir = Path(sys.executable).parent

    typer.echo("")
    typer.secho(f"pipeline run {pipeline_run.name}: {pipeline_run.status.value} in {elapsed:.0f}s", bold=True)
    if step.status == ExecutionStatus.CACHED:
        typer.echo(f"  no retraining happened ({len(cached)} cached steps): no new model version; "
                   f"the latest model of these inputs is {registration['model_name']} v{registration['version']}")
    else:
        typer.echo(f"  registered {registration['model_name']} version {registration['version']} "
                   f"-> alias '{registration['alias']}' ({registration['reason']})")
    intervals = evaluation.get("intervals", {})
    typer.echo(f"  test ({evaluation['n_test']} lesions; 95% patient-bootstrap intervals):")
    for name, value in evaluation["metrics"].items():
        low, high = intervals.get(name, (float("nan"), float("nan")))
        typer.echo(f"    {name:<18} {value:.3f}  [{low:.3f}, {high:.3f}]")
    typer.echo(f"  one-feature baseline, mean HU threshold: test accuracy {evaluation['mean_hu_threshold_accuracy']:.3f} "
               f"fitted on train, {evaluation['mean_hu_best_threshold_accuracy']:.3f} at the best threshold for the test set")
    typer.echo(f"  reports: {Path(evaluation['plots']['roc_curve']).parent}")
    typer.echo(f"  MLflow UI: {bin_dir / 'mlflow'} ui --backend-store-uri {env['MLFLOW_TRACKING_URI']}")
    typer.echo(f"  ZenML runs: ZENML_CONFIG_PATH={env['ZENML_CONFIG_PATH']} {bin_dir / 'zenml'} pipeline runs list")
    typer.echo(f"  registry: {bin_dir / 'liverlesion'} models --name {registration['model_name']}")


@app.command()
def compare(
    profile: ProfileOption = "quick",
    models: Annotated[str | None, typer.Option(
        help="comma-separated models (default: compare.models of the profile, all five): svm_texture, "
             "inception_resnet_v2_npw, inception_resnet_v2_ipw, inception_v3_npw, inception_v3_ipw")] = None,
    overrides: SetOption = [],  # noqa: B006
    no_cache: Annotated[bool, typer.Option("--no-cache", help="re-run every step instead of reusing cached ones")] = False,
) -> None:
    """Train and score the models of the paper's Table 2 side by side and write Table 2 with intervals.

    One MLflow run per model, plus one for the report; nothing is registered (`run` does that).
    IPW models need ImageNet weights files (no download here); the run stops before any work
    when one is missing and says which file to place where.
    Examples: `liverlesion compare`; `liverlesion compare --models svm_texture,inception_v3_npw`.
    """
    from liverlesion.zoo import model_entry

    env = _environment()
    if models is not None:
        overrides = [*overrides, "compare.models=[" + ",".join(m.strip() for m in models.split(",") if m.strip()) + "]"]
    config = _load(profile, overrides)
    cnns = [model_entry(key) for key in config.compare.models if model_entry(key).kind == "cnn"]
    _check_weights([(f"{entry.key} (compare.imagenet_weights.{entry.backbone})",
                     config.compare.train_config(entry.key, config.train).weights, entry.backbone)
                    for entry in cnns if entry.pretrained],
                   hint="or compare without the IPW models: --models " + ",".join(
                       key for key in config.compare.models if not model_entry(key).pretrained))
    version = _prepare_data(config)
    started = time.perf_counter()
    pipeline_run = _run_pipeline("comparison_pipeline", no_cache, data_dir=str(version.path),
                                 data_version=version.hash, profile=config)
    summary = pipeline_run.steps["compare_models"].outputs["table2"][0].load()
    typer.echo("")
    typer.secho(f"pipeline run {pipeline_run.name}: {pipeline_run.status.value} in {time.perf_counter() - started:.0f}s",
                bold=True)
    typer.echo(Path(summary["files"]["md"]).read_text().split("\n## The paper's")[0].strip())
    typer.echo(f"\n  reports: {Path(summary['files']['md']).parent}")
    typer.echo(f"  MLflow runs (experiment '{config.register.experiment}'): table2 {summary['mlflow_run_id']}; "
               + ", ".join(f"{key} {run}" for key, run in summary["model_runs"].items()))
    typer.echo(f"  MLflow UI: {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {env['MLFLOW_TRACKING_URI']}")


@app.command()
def export(
    out: Annotated[Path | None, typer.Argument(help="the .npz to write; default <state>/exports/<profile>-patches.npz")] = None,
    profile: ProfileOption = "quick",
    overrides: SetOption = [],  # noqa: B006
    no_cache: Annotated[bool, typer.Option("--no-cache", help="re-run the data steps instead of reusing cached ones")] = False,
) -> None:
    """Write the validated, split patches of a profile to one .npz, for training off the pipeline.

    Runs (or reuses from cache) ingest -> segment -> extract_patches -> validate -> split and
    writes what `bench/train_gpu.py` reads, on a machine with Keras + JAX only.
    Example: `liverlesion export --profile paper /tmp/paper-patches.npz`.
    """
    from liverlesion import paths
    from liverlesion.patchset import export_patches

    _environment()
    config = _load(profile, overrides)
    version = _prepare_data(config)
    pipeline_run = _run_pipeline("patches_pipeline", no_cache, data_dir=str(version.path),
                                 data_version=version.hash, profile=config)

    def output(step: str, name: str):
        return pipeline_run.steps[step].outputs[name][0].load()

    target = out or paths.state_home() / "exports" / f"{config.name}-patches.npz"
    meta = {"profile": config.name, "data_version": version.hash, "zenml_run_name": pipeline_run.name,
            "split_manifest_hash": output("split", "split_manifest_hash"),
            "patches": config.patches.model_dump(mode="json"), "train": config.train.model_dump(mode="json")}
    export_patches(target, output("extract_patches", "patches"), output("extract_patches", "patch_index"),
                   output("split", "split_manifest"), meta)
    size = target.stat().st_size / 2**20
    typer.echo(f"wrote {target} ({size:.1f} MiB): patches of {config.name!r}, split {meta['split_manifest_hash'][:12]}")


@app.command()
def data(
    profile: ProfileOption = "quick",
    overrides: SetOption = [],  # noqa: B006
    regenerate: Annotated[bool, typer.Option(help="replace data/ by a cohort generated from the seed")] = False,
) -> None:
    """Restore (DVC) or regenerate (seed) the cohort in data/, version it and push it to the DVC remote.

    Examples: `liverlesion data`; `liverlesion data --regenerate` (after changing the generator).
    """
    _environment()
    _prepare_data(_load(profile, overrides), regenerate)


@app.command()
def generate(
    out: Annotated[Path, typer.Argument(help="an empty or new folder")],
    n_patients: int = 63,
    n_lesions: int = 230,
    seed: int = 2019,
    workers: Annotated[int, typer.Option(help="processes (the bytes written do not depend on it)")] = 2,
) -> None:
    """Write a synthetic phantom cohort (NIfTI CT in HU + lesion masks + cases.csv) to OUT."""
    from liverlesion.phantom import CohortSpec, generate_cohort
    from liverlesion.progress import progress_printer

    spec = CohortSpec(seed=seed, n_patients=n_patients, n_lesions=n_lesions)
    generate_cohort(spec, out, progress=progress_printer("generate"), workers=workers)
    typer.echo(f"wrote {n_patients} cases with {n_lesions} lesions to {out}")


@app.command()
def models(name: Annotated[str, typer.Option(help="registered model name")] = "liver-lesion-classifier") -> None:
    """List the registered versions of a model with their aliases, metrics and lineage."""
    env = _environment()
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"], env["MLFLOW_TRACKING_URI"])
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException:
        typer.secho(f"no registered model {name!r} in {env['MLFLOW_TRACKING_URI']}", fg="yellow")
        raise typer.Exit(1) from None
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    for mv in sorted(client.search_model_versions(f"name='{name}'"), key=lambda m: int(m.version)):
        typer.echo(json.dumps({"version": mv.version, "aliases": by_version.get(str(mv.version), []), "tags": mv.tags},
                              indent=2, sort_keys=True))


def main() -> None:  # pragma: no cover
    app()
