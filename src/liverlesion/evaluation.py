"""Scoring the held-out test lesions: metrics with patient-level intervals, a one-feature baseline,
and the comparison of several models on the same lesions (the paper's Table 2)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from liverlesion.config import BootstrapConfig
from liverlesion.metrics import best_threshold_accuracy, fitted_threshold_accuracy, plot_confusion_matrix
from liverlesion.report import bootstrap_metrics, plot_roc_curves, write_report


@dataclass(frozen=True)
class TestEvaluation:
    predictions: pd.DataFrame  # lesion_id, label, p_metastasis, predicted, patient_key, volume_ml, mean_hu
    intervals: pd.DataFrame  # metric, estimate, lower, upper (95% patient-level bootstrap)
    mean_hu_threshold_accuracy: float  # threshold fitted on the train lesions, scored on test
    mean_hu_best_threshold_accuracy: float  # the best threshold for the test lesions themselves

    @property
    def metrics(self) -> dict[str, float]:
        return {row.metric: float(row.estimate) for row in self.intervals.itertuples()}


def evaluate_test_set(
    lesion_ids: list[str],
    labels: np.ndarray,
    probability: np.ndarray,
    manifest: pd.DataFrame,
    lesions: pd.DataFrame,
    threshold: float,
    bootstrap: BootstrapConfig,
) -> TestEvaluation:
    """Per-lesion predictions, the 7 metrics with intervals, and the mean-HU baselines.

    The intervals resample patients, not lesions (46 test lesions give wide intervals). The
    baselines say how far one number (mean HU inside the mask) gets on the same lesions: fitted on
    the train lesions (a fair one-feature classifier) and at the test set's own best threshold (an
    upper bound: how separable the split is).
    """
    predictions = pd.DataFrame(
        {
            "lesion_id": lesion_ids,
            "label": np.asarray(labels),
            "p_metastasis": probability,
            "predicted": (np.asarray(probability) >= threshold).astype(int),
        }
    )
    predictions = predictions.merge(lesions[["lesion_id", "patient_key", "volume_ml", "mean_hu"]], on="lesion_id")
    intervals = bootstrap_metrics(
        predictions["label"],
        predictions["p_metastasis"],
        predictions["patient_key"].to_numpy(),
        threshold,
        bootstrap.resamples,
        bootstrap.seed,
        bootstrap.confidence,
    )
    train = manifest[manifest["set"] == "train"].merge(lesions[["lesion_id", "mean_hu"]], on="lesion_id")
    fitted, _ = fitted_threshold_accuracy(
        train["mean_hu"], train["label"], predictions["mean_hu"], predictions["label"]
    )
    best, _ = best_threshold_accuracy(predictions["mean_hu"], predictions["label"])
    return TestEvaluation(predictions, intervals, fitted, best)


def write_comparison(
    predictions: Mapping[str, pd.DataFrame],
    out_dir: Path,
    threshold: float,
    bootstrap: BootstrapConfig,
    title: str = "Table 2 on this cohort",
    cohort_note: str = "",
    model_notes: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Table 2 across models: metrics with patient-level intervals, one ROC plot, confusion matrices.

    Every model must have scored the same test lesions (one split); the report would otherwise
    compare different lesions.

    Args:
        predictions: model label -> per-lesion predictions (``lesion_id``, ``patient_key``,
            ``label``, ``p_metastasis``), in the order the rows should appear.
        out_dir: folder for ``table2.md``/``.csv``, ``roc_curves.png``, ``confusion_<n>.png`` and
            ``test_predictions.csv`` (one row per model and lesion).
        model_notes: model label -> what a reader must know to trust its row (e.g. which weights it
            started from); listed under the table.

    Raises:
        ValueError: no model, or models scored different lesions, naming them.
    """
    if not predictions:
        raise ValueError("no model predictions to compare")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reference_name, reference = next(iter(predictions.items()))
    reference_ids = set(reference["lesion_id"])
    for name, table in predictions.items():
        if set(table["lesion_id"]) != reference_ids:
            raise ValueError(f"{name} scored other test lesions than {reference_name}; compare models on one split")
    by_model = {
        name: table.set_index("lesion_id").loc[reference["lesion_id"]].reset_index()
        for name, table in predictions.items()
    }
    intervals = {
        name: bootstrap_metrics(
            t["label"],
            t["p_metastasis"],
            t["patient_key"].to_numpy(),
            threshold,
            bootstrap.resamples,
            bootstrap.seed,
            bootstrap.confidence,
        )
        for name, t in by_model.items()
    }
    note = cohort_note or (
        f"{len(reference)} test lesions of {reference['patient_key'].nunique()} patients; "
        f"a lesion is called metastasis at P >= {threshold}."
    )
    files = dict(write_report(intervals, out_dir, title, note))
    if model_notes:
        text = files["md"].read_text(encoding="utf-8")
        table_end = text.index("\n## ")
        listing = "\n".join(f"- {name}: {model_notes[name]}" for name in predictions if name in model_notes)
        files["md"].write_text(
            text[:table_end] + "\n## The models\n\n" + listing + "\n" + text[table_end:], encoding="utf-8"
        )
    files["roc"] = plot_roc_curves(
        {name: (t["label"], t["p_metastasis"]) for name, t in by_model.items()}, out_dir / "roc_curves.png"
    )
    for i, (name, t) in enumerate(by_model.items(), start=1):
        files[f"confusion_{i}"] = plot_confusion_matrix(
            t["label"], t["p_metastasis"], threshold, out_dir / f"confusion_{i}.png", title=name
        )
    columns = ["lesion_id", "patient_key", "label", "p_metastasis", "predicted"]
    long = pd.concat(
        [
            t.assign(predicted=(t["p_metastasis"] >= threshold).astype(int))[columns].assign(model=name)
            for name, t in by_model.items()
        ],
        ignore_index=True,
    )
    files["predictions"] = out_dir / "test_predictions.csv"
    long[["model", *columns]].to_csv(files["predictions"], index=False)
    return files
