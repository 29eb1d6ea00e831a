"""``evaluate``: a cohort's automatic segmentation measured against its reference masks (nothing trained)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from liverlesion_ops.cli.common import (
    DEFAULT_PROFILE,
    DataOption,
    JsonOption,
    ProfileOption,
    SegmenterOption,
    SegmentOption,
    SetOption,
    VersionOption,
    automatic_segmentation,
    fail,
    json_output,
    load_profile,
    print_json,
    say,
    setup,
)

HELP_PANEL = "Evaluation"


def register(app: typer.Typer) -> None:
    app.command(name="evaluate", rich_help_panel=HELP_PANEL)(evaluate)


def evaluate(
    data: DataOption = None,
    segment: SegmentOption = None,
    segmenter: SegmenterOption = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="score this registered model's classification instead (a name: its champion, or --version; or an "
            "MLflow model URI) on the cohort's typed lesions",
        ),
    ] = None,
    version: VersionOption = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="folder for the report (default: reports/evaluation-<method>-<time>/)"),
    ] = None,
    profile: ProfileOption = DEFAULT_PROFILE,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Measure automatic segmentation, or a registered model's classification, on a cohort with reference
    masks, without training anything.

    Per CT: liver Dice and ASSD (where the cohort has liver_mask), lesion Dice and ASSD, reference lesions
    found or missed, automatic lesions invented or outside the liver, seconds; per lesion: its size class
    (segment.diameter_bins_mm) and outcome. Writes segmentation.md, segmentation_cases.csv,
    segmentation_lesions.csv and summary.json, and logs them in an MLflow run tagged job=evaluation with the
    cohort's content hash. Examples: `liverlesion evaluate --data /cohorts/ircadb`;
    `liverlesion evaluate --data /cohorts/lits --segment learned --json`.

    With --model (and --version): the registered version scores every typed lesion of the cohort as predict
    would (its calibration and threshold): the seven metrics with patient-bootstrap intervals, Brier score and
    ECE, breakdown by size, slice spacing and patient, the worst-scored lesions and an example lesion map, in a
    report folder with one self-contained page (report.html) and an MLflow run tagged job=evaluation; the version
    gets tags external.<cohort hash>.<metric>, its model card (the version's description) a row under External
    evaluations, and `liverlesion audit` lists the evaluation. Example:
    `liverlesion evaluate --data /cohorts/ircadb --model liver-lesion-classifier --json`.
    """
    from liverlesion_ops import evaluation

    setup()
    if model is not None or version is not None:
        if segment is not None or segmenter is not None:
            raise fail("--model scores a classifier on the cohort's own masks: leave out --segment and --segmenter")
        config = load_profile(profile, overrides)
        with json_output(as_json):
            record = evaluation.score_model(config, data, model or config.register.model_name, version, out)
        if as_json:
            print_json(record)
            return
        m, ci = record["metrics"], record["intervals"]
        say(
            f"{record['model']} on {record['data']['lesions']} typed lesions of {record['data']['patients']} "
            f"patient(s) (cohort {record['data']['version'][:12]}; metastasis at P >= {record['threshold']:.3g}, "
            f"calibration {record['calibration']}):"
        )
        for name in ("accuracy", "roc_auc", "recall", "specificity", "brier", "ece"):
            say(f"  {name:<12} {m[name]:.3f}  [{ci[name][0]:.3f}, {ci[name][1]:.3f}]")
        say(f"  report: {record['report']}; MLflow run {record['mlflow_run_id']} (job=evaluation)")
        return
    config = load_profile(profile, overrides, keras_backend=False)
    config = config.model_copy(update={"segment": automatic_segmentation(config.segment, segment, segmenter)})
    with json_output(as_json):
        record = evaluation.evaluate(config, data, out)
    if as_json:
        print_json(record)
        return
    summary = record["summary"]
    say(
        f"{record['method']} segmentation of {summary['cases']} CT(s) (cohort {record['data']['version'][:12]}): "
        f"liver Dice median {summary['liver_dice_median']:.3f} (min {summary['liver_dice_min']:.3f}), "
        f"{summary['found_lesions']}/{summary['reference_lesions']} lesions found, {summary['invented_lesions']} "
        f"invented, {summary['seconds_per_case']:.1f} s per CT"
    )
    for size in summary["by_size"]:
        say(f"  {size['size']:>9}: {size['found']}/{size['reference']} found")
    say(f"  report: {record['report']}; MLflow run {record['mlflow_run_id']} (job=evaluation)")
