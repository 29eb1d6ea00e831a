"""Commands that answer for patients: ``predict`` (one CT) and ``predict-batch`` (a folder of cases, a ZenML run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from liverlesion_ops.cli.common import (
    DEFAULT_PROFILE,
    DataOption,
    JsonOption,
    ModelOption,
    ProfileOption,
    SegmenterOption,
    SegmentOption,
    SetOption,
    VersionOption,
    automatic_segmentation,
    json_output,
    load_profile,
    note,
    print_json,
    say,
    setup,
)

HELP_PANEL = "Answers"


def register(app: typer.Typer) -> None:
    app.command(name="predict", rich_help_panel=HELP_PANEL)(predict)
    app.command(name="predict-batch", rich_help_panel=HELP_PANEL)(predict_batch)


def predict(
    ct: Annotated[Path, typer.Argument(help="the CT: a NIfTI file (HU) or a folder holding one DICOM CT series")],
    mask: Annotated[
        Path | None,
        typer.Option(
            "--mask",
            help="its lesion mask: a NIfTI file on the CT's grid, or a DICOM-SEG file; without one, the lesions are "
            "segmented automatically (--segment)",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="folder for the results (default: ./prediction-<name>)")
    ] = None,
    segment: SegmentOption = None,
    segmenter: SegmenterOption = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model", help="registered model name or MLflow model URI (default: the profile's register.model_name)"
        ),
    ] = None,
    version: VersionOption = None,
    mask_encoding: Annotated[str, typer.Option("--mask-encoding", help="auto, binary, instance or class")] = "auto",
    case_id: Annotated[
        str | None, typer.Option("--case-id", help="the case's name in the results (default: from the file)")
    ] = None,
    profile: ProfileOption = DEFAULT_PROFILE,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Classify every lesion of one CT with the registered model (default: the champion).

    Writes lesions.csv and lesions.json (volume, centroid in patient mm, P(metastasis), class, model
    version), lesion_classes.nii.gz (each lesion coded 1 cyst / 2 metastasis, in the CT's own
    geometry), lesion_map.png (the paper's Figure 5) and, for DICOM input, lesion_classes.seg.dcm
    (a DICOM-SEG referencing the CT series, for a PACS viewer). Without --mask the lesions come from
    automatic segmentation with the profile's segment settings (--segment classical or learned), and
    liver.nii.gz (the liver found) is written too; lesions.json says which segmentation found them.
    Examples: `liverlesion predict ct.nii.gz --mask lesions.nii.gz --out result/`;
    `liverlesion predict ct.nii.gz --segment learned --out result/`.
    """
    from liverlesion.predict import metastasis_count
    from liverlesion_ops import prediction

    setup()
    # the profile's segmentation and model name only: the registered network loads on whatever Keras backend is here
    config = load_profile(profile, overrides, keras_backend=False)
    settings = config.segment if mask is not None else automatic_segmentation(config.segment, segment, segmenter)
    reference = prediction.model_reference(model or config.register.model_name, version)
    with json_output(as_json):
        answer = prediction.predict(ct, mask, out, settings, reference, mask_encoding, case_id)
    results = answer["results"]
    for text in answer["notes"]:
        note(text)
    if as_json:
        say(answer["files"]["json"].read_text().rstrip())
        return
    say(
        f"{answer['case']}: {len(results)} lesion(s), {metastasis_count(results)} called metastasis, by "
        f"{answer['model_name']} v{answer['model_version']} ({answer['model']}; P(metastasis) >= {answer['threshold']})"
    )
    for row in results.itertuples(index=False):
        say(
            f"  {row.lesion_id}  {row.volume_ml:8.2f} mL  at ({row.x_mm:7.1f}, {row.y_mm:7.1f}, {row.z_mm:7.1f}) mm"
            f"  P(metastasis) {row.p_metastasis:.3f}  {row.predicted_class}"
        )
    say("  files: " + ", ".join(str(path) for path in answer["files"].values()))
    say("  research use only, not for diagnostic use")


def predict_batch(
    data: DataOption = None,
    model: ModelOption = None,
    version: VersionOption = None,
    profile: ProfileOption = DEFAULT_PROFILE,
    overrides: SetOption = None,
    as_json: JsonOption = False,
) -> None:
    """Answer every case of a cohort folder with one registered model version, as a ZenML pipeline.

    ingest -> predict_cases: each case gets the files `predict` writes, in
    reports/<run>/predictions/<case>/, with one table of all lesions; the run records the model
    version it used (step metadata, an MLflow run tagged job=batch_inference). The cohort folder needs
    cases.csv and the lesion masks; lesion types are not needed.
    Example: `liverlesion predict-batch --data /cohorts/new-patients`.
    """
    from liverlesion_ops import runs
    from liverlesion_ops.registry.registration import servable_version

    setup()
    config = load_profile(profile, overrides)
    name = model or config.register.model_name
    number = servable_version(name, version)  # a number, not an alias: the run (and its cache) is keyed by it
    with json_output(as_json):
        cohort = runs.cohort(config, data)
        pipeline_run = runs.run_pipeline(
            runs.BATCH_INFERENCE,
            False,
            data_dir=str(cohort.path),
            data_version=cohort.hash,
            profile=config,
            model_name=name,
            model_version=number,
        )
    record = runs.step_output(pipeline_run, "predict_cases", "inference_record")
    if as_json:
        print_json(record)
        return
    say(f"{record['cases']} case(s), {record['lesions']} lesion(s) answered by {name} v{number}: {record['table']}")
