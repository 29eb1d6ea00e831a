"""``liverlesion``: one command line for the pipeline. See ``liverlesion --help``."""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager, redirect_stdout
from datetime import UTC
from pathlib import Path
from typing import Annotated, Any

import typer


class _App(typer.Typer):
    """The command line; a tracking server that refuses the credentials or a permission, or cannot be
    reached, is said in one line (exit 4), wherever in a command it happens, never as a traceback."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except Exception as err:
            from liverlesion_ops.tracking import EXIT_SERVER, server_problem

            problem = server_problem(err)
            if problem is None:
                raise
            typer.secho(f"error: {problem}", fg="red", err=True)
            sys.exit(EXIT_SERVER)


app = _App(
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
        "  liverlesion import /data/lits --layout lits --types types.csv   # real CT in (de-identified)\n\n"
        "  liverlesion predict ct.nii.gz --mask lesions.nii.gz --out result/  # answers for one patient\n\n"
        "  liverlesion predict-batch --data /cohorts/new   # a folder of cases, as a ZenML run\n\n"
        "  liverlesion retrain                # for cron: trains only if data, settings or code changed\n\n"
        "  liverlesion promote 3 --reason '...'   /   liverlesion rollback --reason '...'\n\n"
        "  liverlesion audit @champion        # which data, code and patients trained it\n\n"
        "  liverlesion generate /tmp/cohort --n-patients 8 --n-lesions 24\n\n"
        "Exit codes: 0 done; 1 the work failed (a pipeline step, DVC, the registry); 2 a usage or input "
        "error (bad option, profile, data or version), named in one line; 3 another run or retrain holds the "
        "project's training lock; 4 the MLflow tracking server (MLFLOW_TRACKING_URI) refused the credentials "
        "(MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD) or a permission, or cannot be reached."
    ),
)


def _version_callback(value: bool) -> None:
    if value:
        from liverlesion import __version__

        typer.echo(f"liverlesion {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """Liver lesion classification as a reproducible pipeline."""


def _fail(message: str, code: int = 2) -> None:
    """One line (or a short block) on standard error, no traceback, and the exit code."""
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


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


def _environment(tracking: bool = True) -> dict[str, str]:
    """Export the state locations, or stop with the reason (e.g. not inside the project); with ``tracking``,
    check that a tracking server (``MLFLOW_TRACKING_URI=http...``) takes the credentials, or exit 4."""
    from liverlesion_ops.environment import configure_environment

    try:
        values = configure_environment()
    except FileNotFoundError as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(2) from None
    if tracking:
        from liverlesion_ops.tracking import EXIT_SERVER, TrackingServerError, check_server

        try:
            check_server(values["MLFLOW_TRACKING_URI"])
        except TrackingServerError as err:
            _fail(str(err), EXIT_SERVER)
    return values


def _load(profile: str, overrides: list[str], keras_backend: bool = True):
    """The profile, or exit 2 naming the problem; with ``keras_backend`` (commands whose steps load Keras),
    its ``train.backend`` is made the one Keras loads."""
    from liverlesion.config import ConfigError, load_profile
    from liverlesion_ops.environment import use_keras_backend

    try:
        config = load_profile(profile, _parse_overrides(overrides))
        if keras_backend:
            use_keras_backend(config.train.backend)  # before anything loads Keras
        return config
    except (ConfigError, RuntimeError) as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(2) from None


def _prepare_data(profile, regenerate: bool = False, data: Path | None = None):
    from liverlesion import paths
    from liverlesion.progress import progress_printer
    from liverlesion_ops import environment
    from liverlesion_ops.datastore import DataStoreError, external_data, prepare_data

    if data is not None and data.resolve() != paths.data_dir().resolve():
        try:
            version = external_data(data)
        except DataStoreError as err:
            _fail(str(err))
        typer.echo(version.describe())
        return version
    try:
        version = prepare_data(
            paths.project_root(), profile.cohort, environment.dvc_remote(), progress_printer("generate"), regenerate
        )
    except DataStoreError as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(version.describe())
    return version


ProfileOption = Annotated[str, typer.Option("--profile", "-p", help="profile name in configs/ or a YAML path")]
DataOption = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="the cohort folder to use (default: the project's DVC-tracked data/); any folder holding "
        "cases.csv, also outside the checkout, versioned by its content hash",
    ),
]
SetOption = Annotated[list[str], typer.Option("--set", help="override a setting, e.g. --set train.epochs=2")]


@app.command()
def run(
    profile: ProfileOption = "quick",
    overrides: SetOption = [],  # noqa: B006 (typer needs a literal default)
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="re-run every step instead of reusing cached ones")
    ] = False,
    data: DataOption = None,
) -> None:
    """Run the whole training DAG and register the model in MLflow.

    Examples: `liverlesion run`; `liverlesion run --profile paper`; `liverlesion run --set train.epochs=1`;
    `liverlesion run --data /biobank/cohort --set ingest.on_bad_case=quarantine`.
    """
    env = _environment()
    config = _load(profile, overrides)
    _check_weights([("train.weights", config.train.weights, config.train.backbone)])
    with _training_lock(f"liverlesion run --profile {config.name}"):
        version = _prepare_data(config, data=data)
        started = time.perf_counter()
        pipeline_run = _run_pipeline("training_pipeline", no_cache, **_training_parameters(config, version))
    _print_summary(pipeline_run, time.perf_counter() - started, env)


@contextmanager
def _training_lock(what: str):
    """The project's training lock (one training or retraining at a time); exit 3 naming the holder."""
    from liverlesion_ops.registry import RegistryError
    from liverlesion_ops.retrain import EXIT_BUSY, training_lock

    try:
        lock = training_lock(what)
        lock.__enter__()
    except RegistryError as err:
        _fail(f"{err}; try again when it has finished", EXIT_BUSY)
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def _training_parameters(config, version) -> dict[str, Any]:
    """The training pipeline's parameters: the data, the profile, and the keys of what a model depends on."""
    from liverlesion import paths
    from liverlesion.lineage import code_version, training_fingerprint

    code = code_version(paths.code_root())
    settings = config.training_settings()
    segmenter = _segmenter_uri(config)
    if segmenter:  # the model depends on the cascade that found its lesions
        settings["segment"]["resolved_model"] = segmenter
    return {
        "data_dir": str(version.path),
        "data_version": version.hash,
        "profile": config,
        "training_settings": settings,
        "code_version": code,
        "fingerprint": training_fingerprint(version.hash, settings, code),
        "segmenter_uri": segmenter,
    }


def _segmenter_uri(config) -> str:
    """The registered cascade a ``learned`` run segments with (``models:/<name>/<version>``), else ""."""
    if config.segment.method != "learned":
        return ""
    from liverlesion_ops.registry import RegistryError
    from liverlesion_ops.segmenters import resolve_segmenter

    try:
        return resolve_segmenter(config.segment.learned_model)
    except RegistryError as err:
        _fail(str(err))


def _code_version() -> str:
    from liverlesion import paths
    from liverlesion.lineage import code_version

    return code_version(paths.code_root())


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
    from pipelines.placement import run_options, runs_in_containers  # the step image, where steps run in containers

    # called under the training lock: any local run still "running" was killed (a cluster's may still be running)
    if name == "training_pipeline" and not runs_in_containers():
        _close_killed_runs(name)

    try:
        pipeline_run = getattr(pipelines, name).with_options(enable_cache=not no_cache, **run_options())(**parameters)
    except Exception as err:  # the step's own error and log were printed above by ZenML
        last = Client().get_pipeline(name).last_run
        failed = [step for step, s in last.steps.items() if s.status == ExecutionStatus.FAILED]
        typer.secho(
            f"\npipeline run {last.name} failed in step(s) {', '.join(failed) or '?'}: {err}", fg="red", err=True
        )
        from liverlesion_ops.tracking import server_problem_in

        for step in failed:  # a step that failed on the tracking server: say so in one line
            info = last.steps[step].exception_info
            if info is not None and (problem := server_problem_in((info.traceback.strip().splitlines() or [""])[-1])):
                typer.secho(f"  {step}: {problem}", fg="red", err=True)
        report = paths.reports_dir() / last.name / "validation.md"
        if "validate" in failed and report.exists():
            typer.secho(f"nothing was trained or registered; the validation report: {report}", fg="red", err=True)
        raise typer.Exit(1) from None
    return Client().get_pipeline_run(pipeline_run.id)


def _close_killed_runs(pipeline: str) -> None:
    """Mark the runs of a killed process as failed (ZenML) and killed (their MLflow runs).

    Only under the training lock: no other training of this project can be alive, so a training run
    still "in progress" is what a SIGKILL or a crash left. ZenML's local store has no heartbeat and
    would show it running forever. Its completed steps stay cached; its unfinished ones published
    nothing, so nothing partial is ever reused.
    """
    from datetime import datetime

    from mlflow.tracking import MlflowClient
    from zenml.client import Client
    from zenml.enums import ExecutionStatus
    from zenml.models import PipelineRunUpdate, StepRunUpdate

    client = Client()
    stale = client.list_pipeline_runs(pipeline_name=pipeline, in_progress=True, size=100).items
    if not stale:
        return
    now = datetime.now(UTC)
    tracking = MlflowClient()
    for run in stale:
        for step in run.steps.values():
            if not step.status.is_finished:
                client.zen_store.update_run_step(step.id, StepRunUpdate(status=ExecutionStatus.FAILED, end_time=now))
        client.zen_store.update_run(
            run.id, PipelineRunUpdate(status=ExecutionStatus.FAILED, status_reason="its process was killed")
        )
        for experiment in tracking.search_experiments():
            for left in tracking.search_runs(
                [experiment.experiment_id], f"attributes.status = 'RUNNING' and tags.zenml_run_id = '{run.id}'"
            ):
                tracking.set_terminated(left.info.run_id, "KILLED")
        typer.secho(
            f"note: pipeline run {run.name} was left running by a killed process: marked failed (its "
            "MLflow runs killed); its completed steps are reused from cache",
            fg="yellow",
            err=True,
        )


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
    where = [alias for alias, v in registration["aliases"].items() if v == registration["version"]]
    if step.status == ExecutionStatus.CACHED or not registration["created"]:
        typer.echo(
            f"  no retraining happened ({len(cached)} cached steps): no new model version; "
            f"the latest model of these inputs is {registration['model_name']} v{registration['version']}"
        )
    else:
        typer.echo(
            f"  registered {registration['model_name']} version {registration['version']}: "
            f"{registration['decision']} -> alias {', '.join(where) or 'none'} ({registration['reason']})"
        )
    intervals = evaluation.get("intervals", {})
    typer.echo(f"  test ({evaluation['n_test']} lesions; 95% patient-bootstrap intervals):")
    for name, value in evaluation["metrics"].items():
        low, high = intervals.get(name, (float("nan"), float("nan")))
        typer.echo(f"    {name:<18} {value:.3f}  [{low:.3f}, {high:.3f}]")
    typer.echo(
        f"  one-feature baseline, mean HU threshold: test accuracy {evaluation['mean_hu_threshold_accuracy']:.3f} "
        f"fitted on train, {evaluation['mean_hu_best_threshold_accuracy']:.3f} at the best threshold for the test set"
    )
    segmentation = pipeline_run.steps["evaluate_segmentation"].outputs["segmentation_metrics"][0].load()
    if segmentation["method"] != "reference":
        test, counts = segmentation["test"], segmentation["end_to_end"]
        typer.echo(
            f"  {segmentation['method']} segmentation, test patients: liver Dice {test['liver_dice']:.3f}, lesion "
            f"Dice {test['lesion_dice']:.3f}, {test['found_lesions']}/{test['reference_lesions']} lesions found, "
            f"{test['invented_lesions']} invented; missed: {counts['missed_metastasis']} metastases, "
            f"{counts['missed_cyst']} cysts (metrics above: the lesions found)"
        )
        typer.echo(f"  segmentation report: {segmentation['report']}")
    typer.echo(f"  reports: {Path(evaluation['plots']['roc_curve']).parent}")
    typer.echo(f"  MLflow UI: {bin_dir / 'mlflow'} ui --backend-store-uri {env['MLFLOW_TRACKING_URI']}")
    typer.echo(f"  ZenML runs: ZENML_CONFIG_PATH={env['ZENML_CONFIG_PATH']} {bin_dir / 'zenml'} pipeline runs list")
    typer.echo(f"  registry: {bin_dir / 'liverlesion'} models --name {registration['model_name']}")


@app.command()
def compare(
    profile: ProfileOption = "quick",
    models: Annotated[
        str | None,
        typer.Option(
            help="comma-separated models (default: compare.models of the profile, all five): svm_texture, "
            "inception_resnet_v2_npw, inception_resnet_v2_ipw, inception_v3_npw, inception_v3_ipw"
        ),
    ] = None,
    overrides: SetOption = [],  # noqa: B006
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="re-run every step instead of reusing cached ones")
    ] = False,
    data: DataOption = None,
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
    _check_weights(
        [
            (
                f"{entry.key} (compare.imagenet_weights.{entry.backbone})",
                config.compare.train_config(entry.key, config.train).weights,
                entry.backbone,
            )
            for entry in cnns
            if entry.pretrained
        ],
        hint="or compare without the IPW models: --models "
        + ",".join(key for key in config.compare.models if not model_entry(key).pretrained),
    )
    version = _prepare_data(config, data=data)
    started = time.perf_counter()
    pipeline_run = _run_pipeline(
        "comparison_pipeline",
        no_cache,
        data_dir=str(version.path),
        data_version=version.hash,
        profile=config,
        code_version=_code_version(),
        segmenter_uri=_segmenter_uri(config),
    )
    summary = pipeline_run.steps["compare_models"].outputs["table2"][0].load()
    typer.echo("")
    typer.secho(
        f"pipeline run {pipeline_run.name}: {pipeline_run.status.value} in {time.perf_counter() - started:.0f}s",
        bold=True,
    )
    typer.echo(Path(summary["files"]["md"]).read_text().split("\n## The paper's")[0].strip())
    typer.echo(f"\n  reports: {Path(summary['files']['md']).parent}")
    typer.echo(
        f"  MLflow runs (experiment '{config.register.experiment}'): table2 {summary['mlflow_run_id']}; "
        + ", ".join(f"{key} {run}" for key, run in summary["model_runs"].items())
    )
    typer.echo(
        f"  MLflow UI: {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {env['MLFLOW_TRACKING_URI']}"
    )


@app.command(name="train-segmenter")
def train_segmenter(
    profile: ProfileOption = "quick",
    overrides: SetOption = [],  # noqa: B006
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="re-run every step instead of reusing cached ones")
    ] = False,
    data: DataOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the registration and test measures as JSON")] = False,
) -> None:
    """Train the learned segmentation cascade (liver U-Net, then lesion U-Net) and register it in MLflow.

    It learns from the reference masks (lesion masks and the cohort's liver_mask column) of the
    training and validation patients, is measured on the test patients (the classifier's split),
    and becomes the champion of segment.learned_model's registered model when its test lesion Dice
    is at least the champion's. Then `liverlesion run --set segment.method=learned` uses it.
    Example: `liverlesion train-segmenter --set segmenter.epochs=8`.
    """
    env = _environment()
    config = _load(profile, overrides)
    # the cascade learns from the reference masks, whatever the profile segments with (the rest of
    # segment, its post-processing and detection settings, measures it)
    config = config.model_copy(update={"segment": config.segment.model_copy(update={"method": "reference"})})
    with _training_lock(f"liverlesion train-segmenter --profile {config.name}"):
        version = _prepare_data(config, data=data)
        started = time.perf_counter()
        pipeline_run = _run_pipeline(
            "segmenter_pipeline",
            no_cache,
            data_dir=str(version.path),
            data_version=version.hash,
            profile=config,
            code_version=_code_version(),
        )
    result = pipeline_run.steps["train_segmenter"].outputs["segmenter_registration"][0].load()
    if as_json:
        # strict JSON for programs: a measure that could not be taken (no lesion of a class) is null, not NaN
        typer.echo(
            json.dumps(
                {**result, "test": {k: None if v != v else v for k, v in result["test"].items()}},
                indent=2,
                default=str,
                allow_nan=False,
            )
        )
        return
    test = result["test"]
    typer.secho(
        f"pipeline run {pipeline_run.name}: {pipeline_run.status.value} in {time.perf_counter() - started:.0f}s",
        bold=True,
    )
    typer.echo(
        f"  {result['model_name']} v{result['version']}: {result.get('decision', 'already registered')}"
        f"{' (' + result['reason'] + ')' if result.get('reason') else ''}; champion v{result['champion']}"
    )
    typer.echo(
        f"  test patients ({test['cases']} CTs): liver Dice {test['liver_dice']:.3f}, ASSD "
        f"{test['liver_assd_mm']:.2f} mm; lesion Dice {test['lesion_dice']:.3f}; detection recall "
        f"{test['detection_recall']:.3f}; {test['false_positives_per_patient']:.2f} invented lesions per patient"
    )
    typer.echo(
        f"  MLflow UI: {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {env['MLFLOW_TRACKING_URI']}"
    )


@app.command()
def export(
    out: Annotated[
        Path | None, typer.Argument(help="the .npz to write; default <state>/exports/<profile>-patches.npz")
    ] = None,
    profile: ProfileOption = "quick",
    overrides: SetOption = [],  # noqa: B006
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="re-run the data steps instead of reusing cached ones")
    ] = False,
    data: DataOption = None,
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
    version = _prepare_data(config, data=data)
    pipeline_run = _run_pipeline(
        "patches_pipeline",
        no_cache,
        data_dir=str(version.path),
        data_version=version.hash,
        profile=config,
        code_version=_code_version(),
        segmenter_uri=_segmenter_uri(config),
    )

    def output(step: str, name: str):
        return pipeline_run.steps[step].outputs[name][0].load()

    target = out or paths.state_home() / "exports" / f"{config.name}-patches.npz"
    meta = {
        "profile": config.name,
        "data_version": version.hash,
        "zenml_run_name": pipeline_run.name,
        "split_manifest_hash": output("split", "split_manifest_hash"),
        "patches": config.patches.model_dump(mode="json"),
        "train": config.train.model_dump(mode="json"),
    }
    export_patches(
        target,
        output("extract_patches", "patches"),
        output("extract_patches", "patch_index"),
        output("split", "split_manifest"),
        meta,
    )
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
    _environment(tracking=False)
    _prepare_data(_load(profile, overrides, keras_backend=False), regenerate)


def _parse_name_map(pairs: list[str]) -> dict[str, str] | None:
    if not pairs:
        return None
    name_map = {}
    for pair in pairs:
        if "=" not in pair:
            raise typer.BadParameter(f"{pair!r}: expected PATTERN=TYPE, e.g. 'livertumor*=metastasis'")
        pattern, kind = pair.split("=", 1)
        name_map[pattern.strip()] = kind.strip()
    return name_map


@app.command(name="import")
def import_(
    source: Annotated[
        Path, typer.Argument(help="the source: a folder (lits, msd, dicom-seg, crlm, ircadb) or a manifest CSV")
    ],
    layout: Annotated[
        str,
        typer.Option(
            help="manifest, lits, msd, dicom-seg, crlm, ircadb, or cohort (a cohort folder of new cases, e.g. with --append)"
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="the cohort folder to write (default: the project's data/, then versioned with DVC)"),
    ] = None,
    types: Annotated[
        Path | None, typer.Option(help="lesion types table: case, lesion, type (cyst or metastasis)")
    ] = None,
    default_type: Annotated[str | None, typer.Option(help="type of every lesion the table does not type")] = None,
    name_map: Annotated[
        list[str],
        typer.Option(
            "--map",
            help="structure/segment name map, PATTERN=TYPE (TYPE: cyst, metastasis, ignore); replaces the layout's",
        ),
    ] = [],  # noqa: B006
    root: Annotated[Path | None, typer.Option(help="manifest layout: the data root its paths are relative to")] = None,
    append: Annotated[bool, typer.Option(help="add the cases to the cohort already there")] = False,
    replace: Annotated[bool, typer.Option(help="replace the cohort in data/ (its version stays in DVC)")] = False,
    skip_bad: Annotated[
        bool, typer.Option(help="import the good cases and list the refused ones, instead of none")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the import report as JSON")] = False,
) -> None:
    """Convert real CT (DICOM, DICOM-SEG, NIfTI; public dataset layouts) into a de-identified cohort folder.

    Needs LIVERLESION_PSEUDONYM_SECRET (patient keys are keyed-hash pseudonyms). Only voxels and
    geometry are kept; no name, id, date, UID or source path is written. Importing into data/
    versions it with DVC. Examples: `liverlesion import /data/3Dircadb1 --layout ircadb`;
    `liverlesion import /data/lits --layout lits --types lits_types.csv --out /cohorts/lits`.
    """
    import json as json_module
    import shutil

    from liverlesion import paths
    from liverlesion.contract import ContractError
    from liverlesion.deid import pseudonymiser_from_env
    from liverlesion.importers import import_cohort, read_types_table, scan_source
    from liverlesion.progress import progress_printer
    from liverlesion_ops.datastore import DataStoreError, configure_remote, version_data

    into_project = out is None
    if into_project:
        _environment(tracking=False)
        out = paths.data_dir()
    target = out
    if replace:
        if append:
            _fail("--append and --replace exclude each other")
        target = out.parent / f".{out.name}.replacing"
        shutil.rmtree(target, ignore_errors=True)
    elif out.exists() and any(out.iterdir()) and not append:
        _fail(
            f"{out} already holds a cohort: --append adds the new cases to it, --replace replaces it"
            + (" (the old version stays in DVC)" if into_project else "")
        )
    try:
        pseudonymiser = pseudonymiser_from_env()
        cases = scan_source(
            source,
            layout,
            types=read_types_table(types),
            default_type=default_type,
            name_map=_parse_name_map(name_map),
            root=root,
        )
        settings = {
            "types_table": types is not None,
            "default_type": default_type,
            "name_map": _parse_name_map(name_map),
            "skip_bad": skip_bad,
        }
        report = import_cohort(
            cases,
            target,
            pseudonymiser,
            layout,
            settings,
            append=append,
            skip_bad=skip_bad,
            progress=None if as_json else progress_printer("import"),
        )
    except ContractError as err:
        shutil.rmtree(target, ignore_errors=True) if replace else None
        _fail(str(err))
    if replace:
        shutil.rmtree(out, ignore_errors=True)
        target.replace(out)
        report.out = out
    summary = report.to_dict()
    if into_project:
        try:
            from liverlesion_ops import environment

            target = configure_remote(paths.project_root(), environment.dvc_remote())
            summary["data_version"] = version_data(paths.project_root(), target)
        except DataStoreError as err:
            _fail(str(err), 1)
    if as_json:
        typer.echo(json_module.dumps(summary, indent=2))
        return
    typer.echo(
        f"imported {summary['cases']} case(s), {summary['lesions']} lesion(s) into {out}"
        + (f" — DVC version {summary['data_version']} (commit data.dvc)" if into_project else "")
    )
    for line in report.notes:
        typer.echo(f"  note: {line}")
    for line in report.refused:
        typer.secho(f"  refused: {line}", fg="yellow")


def _model_reference(model: str, version: str | None) -> str:
    """``models:/<name>/<version>``, ``models:/<name>@champion``, or the URI given as it is."""
    if model.startswith(("models:/", "runs:/")):
        return model
    return f"models:/{model}/{version}" if version is not None else f"models:/{model}@champion"


@app.command()
def predict(
    ct: Annotated[Path, typer.Argument(help="the CT: a NIfTI file (HU) or a folder holding one DICOM CT series")],
    mask: Annotated[
        Path | None,
        typer.Option(
            help="its lesion mask: a NIfTI file on the CT's grid, or a DICOM-SEG file; "
            "without one, the lesions are segmented automatically (--segment)"
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="folder for the results (default: ./prediction-<name>)")] = None,
    segment: Annotated[
        str,
        typer.Option(help="without --mask: classical (thresholds and morphology) or learned (the registered cascade)"),
    ] = "classical",
    segmenter: Annotated[
        str, typer.Option(help="with --segment learned: the cascade as <model>@<alias> or <model>@<version>")
    ] = "liverlesion-segmenter@champion",
    model: Annotated[str, typer.Option(help="registered model name or MLflow model URI")] = "liver-lesion-classifier",
    version: Annotated[str | None, typer.Option(help="a registered version instead of the 'champion' alias")] = None,
    mask_encoding: Annotated[str, typer.Option(help="auto, binary, instance or class")] = "auto",
    case_id: Annotated[str | None, typer.Option(help="the case's name in the results (default: from the file)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the per-lesion results as JSON")] = False,
) -> None:
    """Classify every lesion of one CT with the registered model (default: the champion).

    Writes lesions.csv and lesions.json (volume, centroid in patient mm, P(metastasis), class, model
    version), lesion_classes.nii.gz (each lesion coded 1 cyst / 2 metastasis, in the CT's own
    geometry), lesion_map.png (the paper's Figure 5) and, for DICOM input, lesion_classes.seg.dcm
    (a DICOM-SEG referencing the CT series, for a PACS viewer). Without --mask the lesions come from
    automatic segmentation (--segment classical or learned), and liver.nii.gz (the liver found) is
    written too; lesions.json says which segmentation found them.
    Examples: `liverlesion predict ct.nii.gz --mask lesions.nii.gz --out result/`;
    `liverlesion predict ct.nii.gz --segment learned --out result/`.
    """
    env = _environment()
    from liverlesion.contract import ContractError
    from liverlesion.predict import metastasis_count

    reference = _model_reference(model, version)
    if mask is None and segment not in ("classical", "learned"):
        _fail(f"--segment {segment!r}: without --mask, classical or learned")
    automatic = None
    try:  # the input first: a bad file is refused before the model is loaded
        image, meta, series = _read_ct(ct)
        name = case_id or (
            f"series-{series.headers[0].get('SeriesNumber', 1)}" if series is not None else ct.name.split(".nii")[0]
        )
        if mask is not None:
            lesion_mask, encoding = _read_mask(mask, meta, series, mask_encoding, name)
        else:
            automatic, segmented_by = _segment_automatically(image, meta, segment, segmenter, name)
            lesion_mask, encoding = automatic.lesions.astype("uint8"), "binary"
        predictor, resolved = _load_predictor(reference, env)
        prediction = predictor.predict(image, meta, lesion_mask, name, encoding)
    except ContractError as err:
        _fail(str(err))
    out = out or Path(f"prediction-{name}")
    extra = predictor.record(
        model=resolved,
        case_id=name,
        input="DICOM series" if series is not None else "NIfTI",
        lesions_from="the given mask" if automatic is None else segmented_by,
    )
    from liverlesion.predict import write_outputs

    files = write_outputs(
        prediction, out, title=f"{name}: {predictor.model_name} v{predictor.model_version}", extra=extra
    )
    if automatic is not None:
        from liverlesion.imaging import save_nifti, to_source_orientation

        files["liver"] = save_nifti(*to_source_orientation(automatic.liver.astype("uint8"), meta), out / "liver.nii.gz")
    if series is not None:
        from liverlesion.dicomio import write_seg
        from liverlesion.predict import class_volume

        files["seg"] = write_seg(
            class_volume(prediction.instances, prediction.results),
            {1: "cyst (predicted)", 2: "metastasis (predicted)"},
            series,
            out / "lesion_classes.seg.dcm",
        )
    results = prediction.results
    if as_json:
        typer.echo(files["json"].read_text())
        return
    typer.echo(
        f"{name}: {len(results)} lesion(s), {metastasis_count(results)} called metastasis, by "
        f"{predictor.model_name} v{predictor.model_version} ({resolved}; P(metastasis) >= {predictor.threshold})"
    )
    for row in results.itertuples(index=False):
        typer.echo(
            f"  {row.lesion_id}  {row.volume_ml:8.2f} mL  at ({row.x_mm:7.1f}, {row.y_mm:7.1f}, {row.z_mm:7.1f}) mm"
            f"  P(metastasis) {row.p_metastasis:.3f}  {row.predicted_class}"
        )
    typer.echo("  files: " + ", ".join(str(path) for path in files.values()))
    typer.echo("  research use only, not for diagnostic use")


@app.command(name="predict-batch")
def predict_batch(
    data: Annotated[
        Path | None,
        typer.Option(
            help="the cohort folder of cases to answer (cases.csv; lesion types "
            "not needed); default: the project's data/"
        ),
    ] = None,
    model: Annotated[str, typer.Option(help="registered model name")] = "liver-lesion-classifier",
    version: Annotated[str | None, typer.Option(help="a registered version instead of the 'champion' alias")] = None,
    profile: ProfileOption = "quick",
    overrides: SetOption = [],  # noqa: B006
    as_json: Annotated[bool, typer.Option("--json", help="print the run's record as JSON")] = False,
) -> None:
    """Answer every case of a cohort folder with one registered model version, as a ZenML pipeline.

    ingest -> predict_cases: each case gets the files `predict` writes, in
    reports/<run>/predictions/<case>/, with one table of all lesions; the run records the model
    version it used (step metadata, an MLflow run tagged job=batch_inference).
    Example: `liverlesion predict-batch --data /cohorts/new-patients`.
    """
    import json as json_module

    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    env = _environment()
    config = _load(profile, overrides)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"], env["MLFLOW_TRACKING_URI"])
    try:  # a number, not an alias: the run (and its cache) is keyed by the version it used
        number = version or client.get_model_version_by_alias(model, "champion").version
        _refuse_incomplete(client, model, str(number))
    except MlflowException as err:
        _fail_if_server_problem(err)
        _fail(
            f"no model version {model} {version or '@champion'} in {env['MLFLOW_TRACKING_URI']}: "
            f"{err.message.splitlines()[0]}"
        )
    version_info = _prepare_data(config, data=data)
    pipeline_run = _run_pipeline(
        "batch_inference_pipeline",
        False,
        data_dir=str(version_info.path),
        data_version=version_info.hash,
        profile=config,
        model_name=model,
        model_version=str(number),
    )
    record = pipeline_run.steps["predict_cases"].outputs["inference_record"][0].load()
    if as_json:
        typer.echo(json_module.dumps(record, indent=2))
        return
    typer.echo(
        f"{record['cases']} case(s), {record['lesions']} lesion(s) answered by {model} v{number}: {record['table']}"
    )


def _refuse_incomplete(client, name: str, version: str) -> None:
    """Exit 2 naming it if the version does not exist or is an incomplete registration (never served)."""
    from liverlesion_ops.registry import RegistryError, check_servable

    try:
        check_servable(client, name, str(version))
    except RegistryError as err:
        _fail(str(err))


def _fail_if_server_problem(err: Exception) -> None:
    """Exit 4 in one line if the error is the tracking server's (credentials, permission, unreachable)."""
    from liverlesion_ops.tracking import EXIT_SERVER, server_problem

    problem = server_problem(err)
    if problem is not None:
        _fail(problem, EXIT_SERVER)


def _load_predictor(reference: str, env: dict[str, str]):
    """The registered pyfunc's predictor, with the model name and version it came from."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(env["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    name, version = "", ""
    try:
        if reference.startswith("models:/"):
            body = reference[len("models:/") :]
            if "@" in body:
                name, alias = body.split("@", 1)
                version = client.get_model_version_by_alias(name, alias).version
            else:
                name, version = body.split("/", 1)
                _refuse_incomplete(client, name, version)
        served = mlflow.pyfunc.load_model(reference).unwrap_python_model()
    except MlflowException as err:
        _fail_if_server_problem(err)
        _fail(
            f"no model {reference} in {env['MLFLOW_TRACKING_URI']}: {err.message.splitlines()[0]}"
            " (`liverlesion models` lists the registered versions)"
        )
    predictor = served.predictor
    predictor.model_name, predictor.model_version = name or served.settings.get("model_name", ""), str(version)
    return predictor, reference


def _read_ct(path: Path):
    """A CT from a NIfTI file or a DICOM series folder: (HU on canonical axes, meta, series or None)."""
    from liverlesion.contract import ContractError
    from liverlesion.imaging import check_hu, load_nifti

    if path.is_dir():
        from liverlesion.dicomio import read_ct_series

        series = read_ct_series(path)
        return series.hu, series.meta, series
    if not path.exists():
        raise ContractError(f"{path}: no such file or folder")
    image, meta = load_nifti(path)
    image, _ = check_hu(image, str(path))
    return image, meta, None


def _is_dicom(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(132)[128:132] == b"DICM"


def _segment_automatically(image, meta, method: str, segmenter: str, name: str):
    """The liver and lesions of a CT by ``method`` (default settings); and what segmented it, in words.

    Raises:
        ContractError: the segmentation found no liver or no lesion, naming the case.
    """
    from liverlesion.contract import ContractError
    from liverlesion.segmentation import SegmentSettings, automatic_segmentation, load_cascade

    settings = SegmentSettings(method=method, learned_model=segmenter)
    cascade, by = None, f"{method} segmentation"
    if method == "learned":
        from liverlesion_ops.registry import RegistryError
        from liverlesion_ops.segmenters import download_cascade, resolve_segmenter

        try:
            uri = resolve_segmenter(segmenter)
        except RegistryError as err:
            _fail(str(err))
        cascade, by = load_cascade(download_cascade(uri)), f"learned segmentation ({uri})"
    found = automatic_segmentation(image, meta.spacing, settings, cascade)
    if not found.liver.any():
        raise ContractError(f"case {name}: the {by} found no liver in this CT")
    if not found.lesions.any():
        raise ContractError(f"case {name}: the {by} found no lesion in the liver; give a mask (--mask) if there is one")
    return found, by


def _read_mask(path: Path, meta, series, encoding: str, name: str):
    """The lesion mask: a NIfTI file on the CT's grid, or a DICOM-SEG of the series (lesion segments only)."""
    from liverlesion.contract import ContractError
    from liverlesion.predict import read_mask_nifti

    if not path.is_file():
        raise ContractError(f"{path}: no such mask file")
    if _is_dicom(path):
        if series is None:
            raise ContractError(f"{path}: a DICOM-SEG needs its CT as a DICOM series folder, not a NIfTI file")
        from liverlesion.dicomio import read_seg
        from liverlesion.importers import NON_LESION_SEGMENTS, match_name, stack_lesions

        lesions = [
            (label, segment, "")
            for _, (label, segment) in sorted(read_seg(path, series).items())
            if match_name(label, NON_LESION_SEGMENTS) is None and segment.any()
        ]
        instances, _ = stack_lesions(
            meta.shape, lesions, f"case {name}", components=False
        )  # as the import numbers them
        return instances, "instance"
    return read_mask_nifti(path, meta, f"case {name}"), encoding


@app.command()
def retrain(
    profile: ProfileOption = "quick",
    overrides: SetOption = [],  # noqa: B006
    force: Annotated[
        bool, typer.Option("--force", help="retrain even if a version was trained on this fingerprint")
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="print the outcome as one JSON object on standard output (progress goes to standard error)"
        ),
    ] = False,
) -> None:
    """Retrain if the data, the training settings or the code changed; gate and record the new version.

    For a scheduler (cron, systemd timer; see infra/). It fingerprints what a training depends on
    (the data version of data/, the profile's training settings, the training code); if a registered
    version was trained on that fingerprint it does nothing and says so. Otherwise it runs the
    training pipeline, whose register step gates the new version against the champion on the same
    patients. Every outcome (nothing to do, trained, failed) is an MLflow run tagged job=retrain.
    New data: `liverlesion import NEW_CASES --layout cohort --append`, then the next retrain trains.

    Exit codes: 0 trained (promoted or not) or nothing to do; 1 the work failed (pipeline, DVC,
    registry); 2 usage or input error; 3 another run or retrain holds the training lock (named).
    """
    from liverlesion_ops import retrain as job

    started = time.perf_counter()
    _environment()
    config = _load(profile, overrides)
    name = config.register.model_name
    outcome: dict[str, Any] = {"profile": config.name, "model_name": name}
    with (
        _training_lock(f"liverlesion retrain --profile {config.name}"),
        redirect_stdout(sys.stderr if as_json else sys.stdout),
    ):
        try:
            version = _prepare_data(config)
            parameters = _training_parameters(config, version)
            outcome.update(
                fingerprint=parameters["fingerprint"],
                data_version=version.hash,
                code_version=parameters["code_version"],
            )
            trained = job.trained_on(name, parameters["fingerprint"])
            if trained is not None and not force:
                outcome.update(
                    status="nothing-to-do",
                    version=str(trained.version),
                    decision=trained.tags.get("decision"),
                    champion=job.champion_of(name),
                    reason=f"v{trained.version} was trained on this fingerprint (data {version.hash[:12]}, "
                    f"{parameters['code_version']}, profile {config.name})",
                )
            else:
                _check_weights([("train.weights", config.train.weights, config.train.backbone)])
                pipeline_run = _run_pipeline("training_pipeline", force, **parameters)
                registration = pipeline_run.steps["register"].outputs["registration"][0].load()
                outcome.update(
                    status="trained",
                    version=registration["version"],
                    decision=registration["decision"],
                    reason=registration["reason"],
                    champion=registration["aliases"].get("champion"),
                    zenml_run_name=pipeline_run.name,
                )
        except typer.Exit as stop:
            if stop.exit_code == 1:  # the work failed (DVC, the pipeline): a scheduler's failure, recorded
                outcome.update(
                    status="failed",
                    error="DVC or the training pipeline failed (see above)",
                    seconds=round(time.perf_counter() - started, 1),
                )
                job.record(config.register.experiment, outcome)
            raise
        outcome["seconds"] = round(time.perf_counter() - started, 1)
        outcome["mlflow_run_id"] = job.record(config.register.experiment, outcome)
    if as_json:
        typer.echo(json.dumps(outcome, indent=2, sort_keys=True))
        return
    champion = f"v{outcome['champion']}" if outcome.get("champion") else "none"
    if outcome["status"] == "nothing-to-do":
        typer.echo(
            f"retrain: nothing to do — {outcome['reason']}; champion {champion} "
            f"({outcome['seconds']:.1f}s; recorded as MLflow run {outcome['mlflow_run_id']})"
        )
    else:
        typer.echo(
            f"retrain: trained {name} v{outcome['version']}: {outcome['decision']} ({outcome['reason']}); "
            f"champion {champion} ({outcome['seconds']:.0f}s; MLflow run {outcome['mlflow_run_id']})"
        )


ReasonOption = Annotated[str, typer.Option("--reason", help="why (recorded on the versions and in an MLflow run)")]


def _registry_action(action, as_json: bool, *args) -> None:
    from liverlesion_ops.registry import RegistryError

    _environment()
    try:
        result = action(*args)
    except RegistryError as err:
        _fail(str(err))
    if as_json:
        typer.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    aliases = ", ".join(f"{alias} v{v}" for alias, v in sorted(result["aliases"].items()))
    if result["job"] == "promote":
        was = f"v{result['previous_champion']}" if result["previous_champion"] else "none"
        typer.echo(
            f"promoted v{result['version']} to champion (was {was}) by {result['by']} "
            f"at {result['at']}: {result['reason']}\n  aliases: {aliases}"
        )
    else:
        typer.echo(
            f"rolled back: champion v{result['rolled_back']} -> v{result['version']} by {result['by']} at "
            f"{result['at']}: {result['reason']}\n  aliases: {aliases}"
        )


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="the registered version to make champion (e.g. 3)")],
    reason: ReasonOption,
    model: Annotated[str, typer.Option(help="registered model name")] = "liver-lesion-classifier",
    experiment: Annotated[
        str, typer.Option(help="MLflow experiment of the decision's run")
    ] = "liver-lesion-classification",
    as_json: Annotated[bool, typer.Option("--json", help="print the decision as JSON")] = False,
) -> None:
    """Make a version the champion by hand; the former champion becomes previous_champion.

    Recorded on the versions (decision, reason, by, at) and as an MLflow run (job=promote); serialised
    with every other registry decision by a lock, so two racing promotions leave exactly one champion.
    Example: `liverlesion promote 3 --reason "validated on the March cohort"`.
    """
    from liverlesion_ops.registry import promote as action

    _registry_action(action, as_json, model, version.lstrip("v"), reason, experiment)


@app.command()
def rollback(
    reason: ReasonOption,
    model: Annotated[str, typer.Option(help="registered model name")] = "liver-lesion-classifier",
    experiment: Annotated[
        str, typer.Option(help="MLflow experiment of the decision's run")
    ] = "liver-lesion-classification",
    as_json: Annotated[bool, typer.Option("--json", help="print the decision as JSON")] = False,
) -> None:
    """Give the champion alias back to previous_champion (which then names the version rolled back).

    Recorded like `promote` (job=rollback). Example: `liverlesion rollback --reason "false negatives on ward 3"`.
    """
    from liverlesion_ops.registry import rollback as action

    _registry_action(action, as_json, model, reason, experiment)


@app.command()
def audit(
    ref: Annotated[
        str | None, typer.Argument(help="a version (3, v3) or an alias (@champion); default @champion")
    ] = None,
    model: Annotated[str, typer.Option(help="registered model name")] = "liver-lesion-classifier",
    as_json: Annotated[bool, typer.Option("--json", help="print the audit as JSON")] = False,
    restore: Annotated[
        Path | None,
        typer.Option(
            help="materialise the version's exact data in this new folder "
            "(from the DVC cache or remote) and check its hash"
        ),
    ] = None,
) -> None:
    """The lineage of a model version: data version (and whether DVC still holds it), code, settings,
    runs, the patients of each split; then the workspace's data held against it.

    Examples: `liverlesion audit`; `liverlesion audit @previous_champion --json`;
    `liverlesion audit 3 --restore /tmp/v3-data`. Exit codes: 0 done; 1 --restore failed (data gone,
    or a hash mismatch); 2 no such version or alias.
    """
    from liverlesion import paths
    from liverlesion_ops.audit import audit as build
    from liverlesion_ops.audit import render
    from liverlesion_ops.registry import RegistryError

    _environment()
    root = paths.project_root()
    try:
        report = build(model, ref, root)
    except RegistryError as err:
        _fail(str(err))
    if restore is not None:
        from liverlesion_ops import dvcobjects

        data_version = report["data"]["version"]
        if report["data"]["kind"] != "dvc":
            _fail(f"v{report['version']} was trained on {data_version}, a folder outside DVC: nothing to restore", 1)
        try:
            verified = dvcobjects.restore(root, data_version, restore, remote=report["data"].get("remote_name"))
        except (FileExistsError, ValueError, dvcobjects.DvcObjectsError) as err:
            _fail(f"cannot restore the data of v{report['version']}: {err}", 1)
        report["restored"] = {"path": str(restore), "verified_version": verified}
    if as_json:
        typer.echo(json.dumps(report, indent=2, sort_keys=True, default=str))
        return
    typer.echo(render(report))
    if restore is not None:
        typer.echo(
            f"  restored: {restore} holds exactly data version {report['restored']['verified_version']} "
            "(every file's md5 and the listing's hash checked)"
        )


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
        typer.echo(
            json.dumps(
                {"version": mv.version, "aliases": by_version.get(str(mv.version), []), "tags": mv.tags},
                indent=2,
                sort_keys=True,
            )
        )


def main() -> None:  # pragma: no cover
    app()
