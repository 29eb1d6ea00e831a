"""``liverlesion evaluate``: a cohort's automatic segmentation measured against its reference masks, without
training anything.

Each CT of the cohort is segmented by the chosen method (classical, or the registered cascade), timed, and
compared with its reference: liver Dice and ASSD (where the cohort has a ``liver_mask``), lesion Dice and
ASSD, each reference lesion found or missed (by size class, ``segment.diameter_bins_mm``), automatic lesions
invented or lying outside the liver (``segment.outside_liver_mm``). The tables and a summary go to a report
folder and to an MLflow run tagged ``job=evaluation`` in the segmentation experiment, with the cohort's
content hash.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from liverlesion.config import Profile
from liverlesion.modelcard import EXTERNAL_TAG_PREFIX

log = logging.getLogger(__name__)

JOB = "evaluation"


def metric_name(size: str) -> str:
    """A size class as MLflow allows it in a metric name: ``<10 mm`` -> ``under_10mm``, ``>=20 mm`` -> ``from_20mm``."""
    return size.replace("<", "under_").replace(">=", "from_").replace(" ", "")


def _cascade(profile: Profile) -> tuple[Any, str]:
    """The registered cascade a ``learned`` evaluation uses, and its URI; (None, "") for ``classical``."""
    if profile.segment.method != "learned":
        return None, ""
    from liverlesion.segmentation import load_cascade
    from liverlesion_ops.segmenters import download_cascade, resolve_segmenter

    uri = resolve_segmenter(profile.segment.learned_model)
    return load_cascade(download_cascade(uri)), uri


def measure_cohort(folder: Path, profile: Profile, cascade: Any = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every case of the cohort segmented by ``profile.segment.method`` and measured (the segmentation tables,
    ``segmentation.SEGMENTATION_CASE_COLUMNS`` and ``SEGMENTATION_LESION_COLUMNS`` plus ``diameter_mm`` and
    ``size`` per lesion).

    Raises:
        CohortError / ContractError: the folder or a case breaks the data contract, naming it.
    """
    from liverlesion.ingestion import contained_path, read_case_table, read_lesion_types
    from liverlesion.segmentation import (
        SEGMENTATION_CASE_COLUMNS,
        SEGMENTATION_LESION_COLUMNS,
        lesion_diameter_mm,
        measure_case,
        read_reference_case,
        size_class,
    )

    settings = profile.segment
    table = read_case_table(folder)
    types = read_lesion_types(folder, set(table["case_id"]))
    cases, lesions = [], []
    for i, row in enumerate(table.itertuples(index=False), start=1):
        where = f"case {row.case_id}"
        reference = read_reference_case(
            contained_path(folder, row.image, f"{where}, image"),
            contained_path(folder, row.mask, f"{where}, mask"),
            contained_path(folder, row.liver_mask, f"{where}, liver mask") if row.liver_mask else None,
            row.case_id,
            row.mask_encoding,
            types.get(row.case_id, {}),
        )
        case, outcome = measure_case(
            row.case_id,
            row.patient_key,
            reference.image,
            reference.spacing,
            reference.instances,
            reference.labels,
            reference.liver,
            settings,
            cascade,
        )
        cases.append(case)
        lesions += outcome
        log.info(
            f"{i}/{len(table)} {row.case_id}: liver Dice {case['liver_dice']:.3f}, {case['found_lesions']}/"
            f"{case['reference_lesions']} lesions found, {case['invented_lesions']} invented, {case['seconds']:.1f} s"
        )
    lesion_table = pd.DataFrame(lesions, columns=list(SEGMENTATION_LESION_COLUMNS))
    lesion_table["diameter_mm"] = lesion_diameter_mm(lesion_table["volume_ml"])
    lesion_table["size"] = [size_class(d, settings.diameter_bins_mm) for d in lesion_table["diameter_mm"]]
    return pd.DataFrame(cases, columns=list(SEGMENTATION_CASE_COLUMNS)), lesion_table


def summarise(cases: pd.DataFrame, lesions: pd.DataFrame, profile: Profile) -> dict[str, Any]:
    """The cohort's figures: ``segmentation.segmentation_summary``, the medians per patient, detection per size
    class, and the automatic lesions outside the liver."""
    from liverlesion.segmentation import detection_by_size, segmentation_summary

    summary: dict[str, Any] = segmentation_summary(cases, lesions)
    per_patient = cases.groupby("patient_key")[["invented_lesions", "outside_liver_lesions"]].sum(min_count=1)
    summary["liver_dice_median"] = float(cases["liver_dice"].median())
    summary["liver_dice_min"] = float(cases["liver_dice"].min())
    summary["invented_per_patient_median"] = float(per_patient["invented_lesions"].median())
    summary["outside_liver_lesions"] = float(cases["outside_liver_lesions"].sum(min_count=1))
    summary["seconds_per_case_max"] = float(cases["seconds"].max())
    summary["by_size"] = detection_by_size(lesions, profile.segment.diameter_bins_mm).to_dict(orient="records")
    return summary


def evaluate(profile: Profile, data: Path | None, out: Path | None) -> dict[str, Any]:
    """Measure the profile's automatic segmentation on a cohort; write the report folder and the MLflow run.

    Returns:
        ``{"method", "cascade", "data": {...}, "summary", "report", "mlflow_run_id"}``.

    Raises:
        ContractError: ``segment.method`` is not automatic.
    """
    import mlflow

    from liverlesion.contract import ContractError
    from liverlesion.report import evaluation_markdown, strict_json
    from liverlesion_ops import project, runs
    from liverlesion_ops.tracking import ensure_experiment, use_tracking_store

    settings = profile.segment
    if not settings.automatic:
        raise ContractError("evaluate measures an automatic segmentation: --segment classical or learned")
    version = runs.cohort(profile, data)
    cascade, uri = _cascade(profile)
    started = time.perf_counter()
    cases, lesions = measure_cohort(version.path, profile, cascade)
    summary = summarise(cases, lesions, profile)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = Path(out) if out is not None else project.reports_dir() / f"evaluation-{settings.method}-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    cases.to_csv(folder / "segmentation_cases.csv", index=False)
    lesions.to_csv(folder / "segmentation_lesions.csv", index=False)
    report = folder / "segmentation.md"
    report.write_text(evaluation_markdown(settings.method, uri, version.hash, cases, summary, settings.detection_dice))
    record = {
        "method": settings.method,
        "cascade": uri,
        "data": {"version": version.hash, "source": version.source, "cases": int(len(cases))},
        "summary": summary,
        "seconds": time.perf_counter() - started,
        "report": str(folder),
    }
    (folder / "summary.json").write_text(strict_json(record, indent=2, default=float) + "\n")
    use_tracking_store()
    mlflow.set_experiment(experiment_id=ensure_experiment(profile.segment_experiment))
    with mlflow.start_run(run_name=f"{JOB}-{settings.method}-{version.hash[:8]}") as run:
        mlflow.set_tags(
            {"job": JOB, "profile": profile.name, "data_version": version.hash, "segment_method": settings.method}
            | ({"segmenter": uri} if uri else {})
        )
        mlflow.log_params({f"segment.{k}": v for k, v in settings.model_dump().items()})
        numbers = {k: v for k, v in summary.items() if isinstance(v, int | float) and np.isfinite(v)}
        mlflow.log_metrics({k: float(v) for k, v in numbers.items()})
        for size in summary["by_size"]:
            if np.isfinite(size["recall"]):
                mlflow.log_metric(f"detection_recall_{metric_name(size['size'])}", float(size["recall"]))
        mlflow.log_artifacts(str(folder), artifact_path="evaluation")
    record["mlflow_run_id"] = run.info.run_id
    return record


def score_model(
    profile: Profile, data: Path | None, model: str, version: str | None, out: Path | None
) -> dict[str, Any]:
    """A registered version scored on a cohort with typed lesions (reference masks), without training anything.

    Every typed lesion is scored by the version's served model, as ``predict`` would (its calibration and its
    threshold): the seven metrics with patient-bootstrap intervals (``table2.md``/``.csv``), calibration (Brier,
    ECE, ``reliability.png``), where it fails (``breakdown.csv``) and the worst-scored lesions
    (``failures.png``), per-lesion ``predictions.csv`` and ``summary.json``; logged in an MLflow run tagged
    ``job=evaluation`` with the model's name and version and the cohort's content hash; and the version gets
    tags ``external.<cohort hash>.<metric>``.

    Raises:
        ContractError: the cohort breaks the data contract or holds no typed lesion.
        RegistryError: no such model or version.
    """
    import mlflow

    from liverlesion.calibration import calibration_intervals, plot_reliability, reliability_table
    from liverlesion.contract import ContractError
    from liverlesion.evaluation import breakdown, plot_failure_gallery, worst_scored
    from liverlesion.htmlreport import write_html_report
    from liverlesion.metrics import classification_metrics, plot_confusion_matrix
    from liverlesion.modelcard import cohort_summary
    from liverlesion.predict import draw_lesion_map
    from liverlesion.report import bootstrap_metrics, plot_roc_curves, strict_json, write_report
    from liverlesion_ops import project, runs
    from liverlesion_ops.prediction import load_predictor, model_reference
    from liverlesion_ops.registry.gate import cohort_gate_set
    from liverlesion_ops.registry.store import registry_client
    from liverlesion_ops.tracking import ensure_experiment, use_tracking_store

    cohort = runs.cohort(profile, data)
    typed = cohort_gate_set(cohort.path)
    if typed.labels.empty:
        raise ContractError(f"{cohort.path}: no lesion with a type (cyst or metastasis) to score")
    predictor, resolved = load_predictor(model_reference(model, version))
    started = time.perf_counter()
    probability = predictor.score_cases(typed.cases, set(typed.labels.index))
    seconds = time.perf_counter() - started
    spacing = typed.cases.set_index("case_id")["spacing_2"]
    scored = typed.lesions[["lesion_id", "case_id", "patient_key", "volume_ml", "label"]].assign(
        p_metastasis=lambda t: t["lesion_id"].map(probability),
        slice_mm=lambda t: t["case_id"].map(spacing),
    )
    threshold, bootstrap, bins = predictor.threshold, profile.evaluate.bootstrap, profile.evaluate.calibration_bins
    scored["predicted"] = (scored["p_metastasis"] >= threshold).astype(int)
    y, p, patients = scored["label"].to_numpy(int), scored["p_metastasis"].to_numpy(float), scored["patient_key"]
    name = f"{predictor.model_name} v{predictor.model_version}".strip()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = Path(out) if out is not None else project.reports_dir() / f"evaluation-model-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    intervals = bootstrap_metrics(
        y, p, patients.to_numpy(), threshold, bootstrap.resamples, bootstrap.seed, bootstrap.confidence, float("nan")
    )  # a metric without a denominator on this cohort (no cyst: specificity) is n/a, not 0
    write_report(
        {name: intervals},
        folder,
        f"{name} on cohort {cohort.hash[:12]}",
        f"{len(scored)} typed lesions of {patients.nunique()} patients, none seen in training unless the cohort "
        f"is the training cohort; a lesion is called metastasis at P >= {threshold:.4g} (the version's).",
    )
    calibration = calibration_intervals(y, p, patients, bins, bootstrap.resamples, bootstrap.seed, bootstrap.confidence)
    calibration.to_csv(folder / "calibration.csv", index=False)
    reliability_table(y, p, bins).to_csv(folder / "reliability.csv", index=False)
    plot_reliability({name: (y, p)}, bins, folder / "reliability.png", title=f"Reliability, {len(y)} lesions")
    config = profile.evaluate
    breakdown(scored, threshold, config.diameter_bins_mm, config.spacing_bins_mm).to_csv(
        folder / "breakdown.csv", index=False
    )
    plot_confusion_matrix(y, p, threshold, folder / "confusion_matrix.png", title=name)
    if len(set(y)) == 2:  # a ROC curve needs both classes
        plot_roc_curves({name: (y, p)}, folder / "roc_curve.png")
    # the gallery's patches: only the worst lesions' cases are read again (memory bounded by gallery_lesions);
    # the worst lesion's CT is the example answer (Figure 5)
    worst = scored.iloc[worst_scored(scored, config.gallery_lesions)]
    stacks = {}
    for case in typed.cases[typed.cases["case_id"].isin(worst["case_id"])].itertuples(index=False):
        again = predictor.predict(*_read_case(case), case.case_id, case.mask_encoding)
        stacks.update(dict(zip(again.results["lesion_id"], again.patches)))
        if case.case_id == worst["case_id"].iloc[0]:
            draw_lesion_map(again, folder / "lesion_map.png", f"{case.case_id}, {name} (its worst-scored lesion's CT)")
    plot_failure_gallery(
        np.stack([stacks[lesion] for lesion in worst["lesion_id"]]) if len(worst) else np.zeros((0, 1, 1, 3)),
        worst.reset_index(drop=True),
        threshold,
        len(worst),
        folder / "failures.png",
    )
    scored.to_csv(folder / "predictions.csv", index=False)
    # a ratio without a denominator (specificity on a cohort without cysts) is undefined here, not 0
    metrics = classification_metrics(y, p, threshold, undefined=float("nan"))
    metrics |= {row.metric: float(row.estimate) for row in calibration.itertuples()}
    record = {
        "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model": resolved,
        "model_name": predictor.model_name,
        "model_version": predictor.model_version,
        "threshold": threshold,
        "calibration": predictor.calibration.method,
        "data": {
            "version": cohort.hash,
            "source": cohort.source,
            "lesions": len(scored),
            "patients": patients.nunique(),
            "origin": cohort_summary(typed.cases, typed.lesions, _cohort_meta(cohort.path))["origin_details"][
                "summary"
            ],
        },
        "metrics": metrics,
        "intervals": {
            row.metric: [float(row.lower), float(row.upper)]
            for table in (intervals, calibration)
            for row in table.itertuples()
        },
        "seconds": seconds,
        "report": str(folder),
    }
    (folder / "summary.json").write_text(strict_json(record, indent=2, default=float) + "\n")
    record["report_html"] = str(
        write_html_report(
            folder,
            f"{name} on cohort {cohort.hash[:12]}",
            [
                ("model", resolved),
                ("cohort", f"{cohort.hash} ({len(scored)} typed lesions of {patients.nunique()} patients)"),
                ("metastasis when", f"P(metastasis) >= {threshold:.4g} (the version's threshold)"),
                ("P(metastasis)", predictor.calibration.describe()),
            ],
            [
                "Scored as predict answers: the version's own preprocessing, calibration and threshold, on the "
                "cohort's reference lesion masks. A cohort the version was trained on is not an external test."
            ],
        )
    )
    use_tracking_store()
    mlflow.set_experiment(experiment_id=ensure_experiment(profile.register.experiment))
    with mlflow.start_run(run_name=f"{JOB}-{predictor.model_name}-v{predictor.model_version}-{cohort.hash[:8]}") as run:
        mlflow.set_tags(
            {
                "job": JOB,
                "profile": profile.name,
                "data_version": cohort.hash,
                "model_name": predictor.model_name,
                "model_version": predictor.model_version,
                "model_uri": resolved,
            }
        )
        mlflow.log_metrics({f"external_{k}": v for k, v in metrics.items() if np.isfinite(v)})
        mlflow.log_artifacts(str(folder), artifact_path="evaluation")
    record["mlflow_run_id"] = run.info.run_id
    if predictor.model_version:
        client = registry_client()
        prefix = f"{EXTERNAL_TAG_PREFIX}{cohort.hash[:12]}."
        tags = {
            **metrics,
            "lesions": len(scored),
            "patients": int(patients.nunique()),
            "run": run.info.run_id,
            "at": record["at"],
        }
        for key, value in tags.items():
            text = f"{value:.4f}" if isinstance(value, float) else str(value)
            client.set_model_version_tag(predictor.model_name, predictor.model_version, prefix + key, text)
        record["model_card"] = update_model_card(predictor.model_name, predictor.model_version, run.info.run_id)
    return record


def _evaluation_summary(client, run_id: str | None) -> dict[str, Any]:
    """An evaluation run's ``summary.json`` ({} if the run or the file is gone)."""
    import json

    from mlflow.exceptions import MlflowException

    if not run_id:
        return {}
    try:
        return json.loads(Path(client.download_artifacts(run_id, "evaluation/summary.json")).read_text())
    except (MlflowException, OSError, ValueError):
        return {}


def update_model_card(name: str, version: str, run_id: str) -> str | None:
    """The version's model card again, with every external evaluation its tags record (each with its intervals
    and cohort origin from the evaluation's ``summary.json``): the version's description (what MLflow's UI shows
    as the card) and ``model_card/model_card.md`` and ``.json`` in the evaluation run ``run_id``.

    The card registered with the version is the base (``model_card/model_card.json`` of its training run); a
    version registered without one keeps its description. Returns the card's artifact URI, or None.
    """
    import json
    import tempfile

    import mlflow
    from mlflow.exceptions import MlflowException

    from liverlesion.modelcard import external_evaluations_from_tags, render_markdown, with_external_evaluations
    from liverlesion_ops.registry.registration import version_description
    from liverlesion_ops.registry.store import registry_client

    client = registry_client()
    registered = client.get_model_version(name, version)
    try:
        card = json.loads(Path(client.download_artifacts(registered.run_id, "model_card/model_card.json")).read_text())
    except (MlflowException, OSError, ValueError):
        log.warning(f"{name} v{version} has no model card to add its external evaluations to")
        return None
    evaluations = []
    for entry in external_evaluations_from_tags(registered.tags):
        summary = _evaluation_summary(client, entry["run"])
        intervals = summary.get("intervals", {})
        evaluations.append(
            {
                **entry,
                "cohort": summary.get("data", {}).get("version", entry["cohort"]),
                "origin": summary.get("data", {}).get("origin"),
                "threshold": summary.get("threshold"),
                "metrics": {
                    metric: {"estimate": value, **dict(zip(("lower", "upper"), intervals.get(metric, [None, None])))}
                    for metric, value in entry["metrics"].items()
                },
            }
        )
    card = with_external_evaluations(card, evaluations, version=str(version))
    markdown = render_markdown(card)
    where = f"`model_card.md` in the `model_card/` artifacts of the evaluation run {run_id}"
    client.update_model_version(name, version, description=version_description(markdown, where))
    with tempfile.TemporaryDirectory(prefix="liverlesion-card-") as tmp:
        (Path(tmp) / "model_card.md").write_text(markdown, encoding="utf-8")
        (Path(tmp) / "model_card.json").write_text(json.dumps(card, indent=2, sort_keys=True), encoding="utf-8")
        with mlflow.start_run(run_id=run_id):
            mlflow.log_artifacts(tmp, artifact_path="model_card")
    return f"runs:/{run_id}/model_card/model_card.md"


def _cohort_meta(folder: Path) -> dict | None:
    """The cohort folder's ``cohort.json`` (where it came from), None if absent or unreadable."""
    import json

    from liverlesion.contract import COHORT_FILE

    try:
        return json.loads((Path(folder) / COHORT_FILE).read_text())
    except (OSError, ValueError):
        return None


def _read_case(case) -> tuple[Any, Any, Any]:
    """A case's CT, its meta and its lesion mask, as ``LesionPredictor.predict`` takes them."""
    from liverlesion.imaging import load_nifti

    image, meta = load_nifti(case.image_path)
    mask, _ = load_nifti(case.mask_path)
    return image, meta, mask
