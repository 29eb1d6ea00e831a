"""Commands that run pipelines: ``run``, ``compare``, ``train-segmenter``, ``retrain``, ``export``; and ``profile``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from liverlesion_ops.cli.common import (
    DEFAULT_PROFILE,
    DataOption,
    JsonOption,
    NoCacheOption,
    ProfileOption,
    SetOption,
    json_output,
    load_profile,
    print_json,
    say,
    setup,
    tools_dir,
)

HELP_PANEL = "Runs"


def register(app: typer.Typer) -> None:
    for command in (run, compare, train_segmenter, retrain, export, profile):
        name = command.__name__.replace("_", "-")
        app.command(name=name, rich_help_panel=HELP_PANEL)(command)


def run(
    profile: ProfileOption = DEFAULT_PROFILE,
    overrides: SetOption = None,
    no_cache: NoCacheOption = False,
    data: DataOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run the whole training DAG and register the model in MLflow (its promotion gate decides the alias).

    Examples: `liverlesion run`; `liverlesion run --profile paper`; `liverlesion run --set train.epochs=1`;
    `liverlesion run --data /biobank/cohort --set ingest.on_bad_case=quarantine --json`.
    """
    from liverlesion_ops import runs

    env = setup()
    config = load_profile(profile, overrides)
    runs.require_weights(runs.training_weights(config))
    with json_output(as_json), runs.training_lock(f"liverlesion run --profile {config.name}"):
        version = runs.cohort(config, data)
        say(version.describe())
        started = time.perf_counter()
        pipeline_run = runs.run_pipeline(runs.TRAINING, no_cache, **runs.training_parameters(config, version))
        summary = runs.training_summary(pipeline_run, time.perf_counter() - started)
    summary["data"] = {"version": version.hash, "source": version.source, "path": str(version.path)}
    summary["test"]["confidence"] = config.evaluate.bootstrap.confidence
    if as_json:
        print_json(summary)
        return
    _print_training_summary(summary, env)


def _print_training_summary(summary: dict[str, Any], env: dict[str, str]) -> None:
    """Where to look after a run: the model version, the test metrics, reports, UIs."""
    registration, test = summary["registration"], summary["test"]
    say("")
    say(f"pipeline run {summary['zenml_run_name']}: {summary['status']} in {summary['seconds']:.0f}s")
    where = [alias for alias, v in registration["aliases"].items() if v == registration["version"]]
    if not summary["retrained"]:
        say(
            f"  no retraining happened ({len(summary['cached_steps'])} cached steps): no new model version; "
            f"the latest model of these inputs is {registration['model_name']} v{registration['version']}"
        )
    else:
        say(
            f"  registered {registration['model_name']} version {registration['version']}: "
            f"{registration['decision']} -> alias {', '.join(where) or 'none'} ({registration['reason']})"
        )
    say(
        f"  test ({test['lesions']} lesions; {test['confidence']:.0%} patient-bootstrap intervals; metastasis at "
        f"P >= {test.get('threshold', 0.5):.3g}, {test.get('threshold_chosen') or 'fixed'}):"
    )
    for name, value in test["metrics"].items():
        low, high = test["intervals"].get(name, (float("nan"), float("nan")))
        say(f"    {name:<18} {value:.3f}  [{low:.3f}, {high:.3f}]")
    say(
        f"  one-feature baseline, mean HU threshold: test accuracy {test['mean_hu_threshold_accuracy']:.3f} "
        f"fitted on train, {test['mean_hu_best_threshold_accuracy']:.3f} at the best threshold for the test set"
    )
    if test.get("calibration_metrics"):
        values, bounds = test["calibration_metrics"], test["calibration_intervals"]
        say(
            f"  calibration {test['calibration']}: "
            + "; ".join(
                f"{label} {values[key]:.3f} [{bounds[key][0]:.3f}, {bounds[key][1]:.3f}]"
                for key, label in (
                    ("brier", "Brier"),
                    ("ece", "ECE"),
                    ("brier_network", "network's own Brier"),
                    ("ece_network", "ECE"),
                )
                if key in values and (test["calibration"] != "none" or not key.endswith("_network"))
            )
        )
    segmentation = summary["segmentation"]
    if segmentation["method"] != "reference":
        measured, counts = segmentation["test"], segmentation["end_to_end"]
        say(
            f"  {segmentation['method']} segmentation, test patients: liver Dice {measured['liver_dice']:.3f}, "
            f"lesion Dice {measured['lesion_dice']:.3f}, {measured['found_lesions']}/{measured['reference_lesions']} "
            f"lesions found, {measured['invented_lesions']} invented; missed: {counts['missed_metastasis']} "
            f"metastases, {counts['missed_cyst']} cysts (metrics above: the lesions found)"
        )
        say(f"  segmentation report: {segmentation['report']}")
    tools = tools_dir()
    say(f"  reports: {summary['reports']}")
    say(f"  MLflow UI: {tools / 'mlflow'} ui --backend-store-uri {env['MLFLOW_TRACKING_URI']}")
    say(f"  ZenML runs: ZENML_CONFIG_PATH={env['ZENML_CONFIG_PATH']} {tools / 'zenml'} pipeline runs list")
    say(f"  registry: {tools / 'liverlesion'} models --model {registration['model_name']}")


def compare(
    profile: ProfileOption = DEFAULT_PROFILE,
    models: Annotated[
        str | None,
        typer.Option(
            help="comma-separated models (default: compare.models of the profile, all five): svm_texture, "
            "inception_resnet_v2_npw, inception_resnet_v2_ipw, inception_v3_npw, inception_v3_ipw"
        ),
    ] = None,
    overrides: SetOption = None,
    no_cache: NoCacheOption = False,
    data: DataOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train and score the models of the paper's Table 2 side by side and write Table 2 with intervals.

    One MLflow run per model, plus one for the report; nothing is registered (`run` does that).
    IPW models need ImageNet weights files (no download here); the run stops before any work
    when one is missing and says which file to place where.
    Examples: `liverlesion compare`; `liverlesion compare --models svm_texture,inception_v3_npw`.
    """
    from liverlesion.zoo import model_entry
    from liverlesion_ops import runs

    env = setup()
    if models is not None:
        chosen = ",".join(m.strip() for m in models.split(",") if m.strip())
        overrides = [*(overrides or []), f"compare.models=[{chosen}]"]
    config = load_profile(profile, overrides)
    cnns = [model_entry(key) for key in config.compare.models if model_entry(key).kind == "cnn"]
    npw = ",".join(key for key in config.compare.models if not model_entry(key).pretrained)
    runs.require_weights(
        [
            (
                f"{entry.key} (compare.imagenet_weights.{entry.backbone})",
                config.compare.train_config(entry.key, config.train).weights,
                entry.backbone,
            )
            for entry in cnns
            if entry.pretrained
        ],
        hint=f"or compare without the IPW models: --models {npw}",
    )
    with json_output(as_json):
        version = runs.cohort(config, data)
        say(version.describe())
        started = time.perf_counter()
        pipeline_run = runs.run_pipeline(runs.COMPARISON, no_cache, **runs.pipeline_parameters(config, version))
        table2 = runs.step_output(pipeline_run, "compare_models", "table2")
    summary = {
        "zenml_run_name": pipeline_run.name,
        "status": pipeline_run.status.value,
        "seconds": round(time.perf_counter() - started, 1),
        "data_version": version.hash,
        **table2,
    }
    if as_json:
        print_json(summary)
        return
    say("")
    say(f"pipeline run {summary['zenml_run_name']}: {summary['status']} in {summary['seconds']:.0f}s")
    say(Path(table2["files"]["md"]).read_text().split("\n## The paper's")[0].strip())
    say(f"\n  reports: {Path(table2['files']['md']).parent}")
    say(
        f"  MLflow runs (experiment '{config.register.experiment}'): table2 {table2['mlflow_run_id']}; "
        + ", ".join(f"{key} {run}" for key, run in table2["model_runs"].items())
    )
    say(f"  MLflow UI: {tools_dir() / 'mlflow'} ui --backend-store-uri {env['MLFLOW_TRACKING_URI']}")


def train_segmenter(
    profile: ProfileOption = DEFAULT_PROFILE,
    overrides: SetOption = None,
    no_cache: NoCacheOption = False,
    data: DataOption = None,
    as_json: JsonOption = False,
) -> None:
    """Train the learned segmentation cascade (liver U-Net, then lesion U-Net) and register it in MLflow.

    It learns from the reference masks (lesion masks and the cohort's liver_mask column) of the
    training and validation patients, is measured on the test patients (the classifier's split),
    and becomes the champion of segment.learned_model's registered model when its test lesion Dice
    is at least the champion's. Then `liverlesion run --set segment.method=learned` uses it.
    Example: `liverlesion train-segmenter --set segmenter.epochs=8`.
    """
    from liverlesion_ops import runs

    env = setup()
    config = load_profile(profile, overrides)
    # the cascade learns from the reference masks, whatever the profile segments with (the rest of
    # segment, its post-processing and detection settings, measures it)
    config = config.model_copy(update={"segment": config.segment.model_copy(update={"method": "reference"})})
    with json_output(as_json), runs.training_lock(f"liverlesion train-segmenter --profile {config.name}"):
        version = runs.cohort(config, data)
        say(version.describe())
        started = time.perf_counter()
        parameters = runs.pipeline_parameters(config, version)
        del parameters["segmenter_uri"]  # it trains the cascade: it segments with none
        pipeline_run = runs.run_pipeline(runs.SEGMENTER, no_cache, **parameters)
        result = runs.step_output(pipeline_run, "train_segmenter", "segmenter_registration")
    if as_json:
        print_json(result)
        return
    test = result["test"]
    say(f"pipeline run {pipeline_run.name}: {pipeline_run.status.value} in {time.perf_counter() - started:.0f}s")
    say(
        f"  {result['model_name']} v{result['version']}: {result.get('decision', 'already registered')}"
        f"{' (' + result['reason'] + ')' if result.get('reason') else ''}; champion v{result['champion']}"
    )
    say(
        f"  test patients ({test['cases']} CTs): liver Dice {test['liver_dice']:.3f}, ASSD "
        f"{test['liver_assd_mm']:.2f} mm; lesion Dice {test['lesion_dice']:.3f}; detection recall "
        f"{test['detection_recall']:.3f}; {test['false_positives_per_patient']:.2f} invented lesions per patient"
    )
    say(f"  MLflow UI: {tools_dir() / 'mlflow'} ui --backend-store-uri {env['MLFLOW_TRACKING_URI']}")


def retrain(
    profile: ProfileOption = DEFAULT_PROFILE,
    overrides: SetOption = None,
    data: DataOption = None,
    force: Annotated[
        bool, typer.Option("--force", help="retrain even if a version was trained on this fingerprint")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Retrain if the data, the training settings or the code changed; gate and record the new version.

    For a scheduler (cron, systemd timer, a cluster's recurring job; see infra/ and docs/operations.md).
    It fingerprints what a training depends on (the data version of data/ or of --data, the profile's
    training settings, the training code); if a registered version was trained on that fingerprint it
    does nothing and says so. Otherwise it runs the training pipeline, whose register step gates the new
    version against the champion on the same patients. Every outcome (nothing to do, trained, failed) is
    an MLflow run tagged job=retrain. New data: `liverlesion import NEW_CASES --layout cohort --append`,
    then the next retrain trains. Exit codes as every command's: 0 trained (promoted or not) or nothing
    to do; 1 the work failed (recorded); 2 a usage error; 3 another training holds the lock.
    """
    from liverlesion_ops.retrain import retrain as job

    setup()
    config = load_profile(profile, overrides)
    with json_output(as_json):
        outcome = job(config, force=force, data=data)
    if as_json:
        print_json(outcome)
        return
    champion = f"v{outcome['champion']}" if outcome.get("champion") else "none"
    if outcome["status"] == "nothing-to-do":
        say(
            f"retrain: nothing to do — {outcome['reason']}; champion {champion} "
            f"({outcome['seconds']:.1f}s; recorded as MLflow run {outcome['mlflow_run_id']})"
        )
    else:
        say(
            f"retrain: trained {outcome['model_name']} v{outcome['version']}: {outcome['decision']} "
            f"({outcome['reason']}); champion {champion} ({outcome['seconds']:.0f}s; MLflow run "
            f"{outcome['mlflow_run_id']})"
        )


def export(
    out: Annotated[
        Path | None, typer.Argument(help="the .npz to write; default <state>/exports/<profile>-patches.npz")
    ] = None,
    profile: ProfileOption = DEFAULT_PROFILE,
    overrides: SetOption = None,
    no_cache: NoCacheOption = False,
    data: DataOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write the validated, split patches of a profile to one .npz, for training off the pipeline.

    Runs (or reuses from cache) ingest -> segment -> extract_patches -> validate -> split and
    writes what `bench/train_gpu.py` reads, on a machine with Keras + JAX only.
    Example: `liverlesion export --profile paper /tmp/paper-patches.npz`.
    """
    from liverlesion.patchset import export_patches
    from liverlesion_ops import project, runs

    setup()
    config = load_profile(profile, overrides)
    with json_output(as_json):
        version = runs.cohort(config, data)
        say(version.describe())
        pipeline_run = runs.run_pipeline(runs.PATCHES, no_cache, **runs.pipeline_parameters(config, version))
    target = out or project.state_home() / "exports" / f"{config.name}-patches.npz"
    meta = {
        "profile": config.name,
        "data_version": version.hash,
        "zenml_run_name": pipeline_run.name,
        "split_manifest_hash": runs.step_output(pipeline_run, "split", "split_manifest_hash"),
        "patches": config.patches.model_dump(mode="json"),
        "train": config.train.model_dump(mode="json"),
        "threshold": config.evaluate.threshold,  # what the test metrics call a metastasis
    }
    export_patches(
        target,
        runs.step_output(pipeline_run, "extract_patches", "patches"),
        runs.step_output(pipeline_run, "extract_patches", "patch_index"),
        runs.step_output(pipeline_run, "split", "split_manifest"),
        meta,
    )
    size = target.stat().st_size / 2**20
    if as_json:
        print_json({"path": str(target), "megabytes": round(size, 1), **meta})
        return
    say(f"wrote {target} ({size:.1f} MiB): patches of {config.name!r}, split {meta['split_manifest_hash'][:12]}")


def profile(
    name: Annotated[str, typer.Argument(help="a profile name in the project's configs/, or a YAML path")] = (
        DEFAULT_PROFILE
    ),
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print a whole profile as a run sees it: configs/base.yaml, the profile and the --set overrides merged.

    Examples: `liverlesion profile paper`; `liverlesion profile --set train.epochs=2 --json`.
    """
    import yaml

    setup(tracking=False)
    values = load_profile(name, overrides, keras_backend=False).model_dump(mode="json")
    if as_json:
        print_json(values)
        return
    say(yaml.safe_dump(values, sort_keys=False).rstrip())
