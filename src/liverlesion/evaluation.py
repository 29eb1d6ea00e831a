"""Scoring the held-out test lesions: metrics with patient-level intervals, a one-feature baseline, what the
probabilities mean (calibration), and the comparison of several models on the same lesions (the paper's
Table 2)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from liverlesion.calibration import (
    Calibration,
    brier_score,
    calibration_intervals,
    plot_reliability,
    reliability_table,
)
from liverlesion.config import BootstrapConfig, EvaluateConfig
from liverlesion.metrics import (
    best_threshold_accuracy,
    classification_metrics,
    fitted_threshold_accuracy,
    plot_confusion_matrix,
    threshold_for,
)
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


def evaluate_calibration(
    calibration: Calibration,
    labels: np.ndarray,
    network_probability: np.ndarray,
    groups: np.ndarray,
    bins: int,
    bootstrap: BootstrapConfig,
    out_dir: Path,
) -> dict[str, Any]:
    """What the test lesions' probabilities mean, before and after ``calibration`` (fitted on the validation
    split): Brier score and ECE with patient-bootstrap intervals, per-bin reliability, and the diagram.

    Writes ``calibration.csv`` (probability x metric with intervals), ``reliability.csv`` (per bin) and
    ``reliability.png`` in ``out_dir``.

    Returns:
        ``calibration`` (its parameters), ``brier``/``ece`` (calibrated, as answered) and ``*_network`` (the
        network's own), ``intervals`` (name -> [lower, upper]) and ``files``.
    """
    out_dir = Path(out_dir)
    curves = {"network": network_probability, "calibrated": calibration(network_probability)}
    if calibration.method == "none":
        curves = {"network": network_probability}
    tables, reliability = [], []
    for name, probability in curves.items():
        table = calibration_intervals(
            labels, probability, groups, bins, bootstrap.resamples, bootstrap.seed, bootstrap.confidence
        )
        tables.append(table.assign(probability=name))
        reliability.append(reliability_table(labels, probability, bins).assign(probability=name))
    intervals = pd.concat(tables, ignore_index=True)[["probability", "metric", "estimate", "lower", "upper"]]
    files = {"calibration": out_dir / "calibration.csv", "reliability": out_dir / "reliability.csv"}
    intervals.to_csv(files["calibration"], index=False)
    pd.concat(reliability, ignore_index=True).to_csv(files["reliability"], index=False)
    files["reliability_diagram"] = plot_reliability(
        {name: (labels, p) for name, p in curves.items()},
        bins,
        out_dir / "reliability.png",
        title=f"Reliability, {len(labels)} test lesions ({calibration.method})",
    )
    answered = "calibrated" if "calibrated" in curves else "network"
    summary: dict[str, Any] = {"calibration": calibration.to_dict(), "intervals": {}, "files": files}
    for row in intervals.itertuples():
        names = [f"{row.metric}_network"] if row.probability == "network" else []
        names += [row.metric] if row.probability == answered else []
        for name in names:
            summary[name] = float(row.estimate)
            summary["intervals"][name] = [float(row.lower), float(row.upper)]
    return summary


#: the columns of ``breakdown``: where the model fails
BREAKDOWN_COLUMNS = (
    "by", "group", "lesions", "patients", "metastases", "cysts", "correct", "accuracy", "recall", "specificity",
    "roc_auc", "brier",
)  # fmt: skip


def _bin_order(bins) -> list[str]:
    """The size classes of ``bins`` from the smallest (``segmentation.size_class``'s names)."""
    from liverlesion.segmentation import size_class

    edges = [float(b) for b in bins]
    return [size_class(d, tuple(edges)) for d in [edges[0] - 1, *edges]]


def breakdown(predictions: pd.DataFrame, threshold: float, diameter_bins_mm, spacing_bins_mm) -> pd.DataFrame:
    """Where the model fails: the test lesions' metrics by lesion diameter (of the ball of its volume), by the
    CT's slice spacing, and per patient.

    The paper's cysts average 0.8 mL and its metastases 24.9 mL: size alone separates much of it, so a model
    must be judged where sizes overlap. A group's ratio without a denominator (no cyst: specificity) and its
    ROC AUC without both classes are NaN, never 0.

    Args:
        predictions: one row per test lesion: ``label``, ``p_metastasis``, ``patient_key``, ``volume_ml``, and
            ``slice_mm`` (the slice spacing of its CT; rows without it are grouped as ``unknown``).
    """
    from liverlesion.segmentation import lesion_diameter_mm, size_class

    frame = predictions.assign(
        diameter=[size_class(d, tuple(diameter_bins_mm)) for d in lesion_diameter_mm(predictions["volume_ml"])],
        spacing=[
            "unknown" if pd.isna(s) else size_class(float(s), tuple(spacing_bins_mm))
            for s in predictions.get("slice_mm", pd.Series(np.nan, index=predictions.index))
        ],
    )
    # size groups in the order of their bins (<10, 10-20, >=20 mm), not the order of their names
    order = {
        "diameter": _bin_order(diameter_bins_mm),
        "spacing": _bin_order(spacing_bins_mm) + ["unknown"],
    }
    rows = []
    for by, column in (("lesion diameter", "diameter"), ("slice spacing", "spacing"), ("patient", "patient_key")):
        groups = frame[column]
        if column in order:
            groups = pd.Categorical(groups, categories=order[column], ordered=True)
        for group, part in frame.groupby(groups, sort=True, observed=True):
            y, p = part["label"].to_numpy().astype(int), part["p_metastasis"].to_numpy(dtype=float)
            values = classification_metrics(y, p, threshold, undefined=float("nan"))
            rows.append(
                {
                    "by": by,
                    "group": str(group),
                    "lesions": len(part),
                    "patients": part["patient_key"].nunique(),
                    "metastases": int(y.sum()),
                    "cysts": int(len(y) - y.sum()),
                    "correct": int(((p >= threshold).astype(int) == y).sum()),
                    **{k: values[k] for k in ("accuracy", "recall", "specificity", "roc_auc")},
                    "brier": brier_score(y, p),
                }
            )
    return pd.DataFrame(rows, columns=list(BREAKDOWN_COLUMNS))


def worst_scored(predictions: pd.DataFrame, count: int) -> np.ndarray:
    """The positions of the ``count`` lesions farthest from their truth (|P(metastasis) - label|), worst first."""
    error = np.abs(predictions["p_metastasis"].to_numpy(dtype=float) - predictions["label"].to_numpy(dtype=float))
    return np.argsort(-error, kind="stable")[: max(count, 0)]


def plot_failure_gallery(
    patches: np.ndarray, predictions: pd.DataFrame, threshold: float, count: int, path: Path
) -> Path:
    """The worst-scored test lesions (the farthest from their truth first: a confident mistake before a
    hesitant one), each with its three patches, P(metastasis), truth, size and case.

    Args:
        patches: (lesions, rows, cols, 3), in the order of ``predictions``' rows.
        predictions: ``lesion_id``, ``label``, ``p_metastasis``, ``volume_ml``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from liverlesion.contract import LABEL_NAMES
    from liverlesion.segmentation import lesion_diameter_mm

    worst = worst_scored(predictions, count)
    fig, axes = plt.subplots(max(len(worst), 1), 3, figsize=(6.0, 2.1 * max(len(worst), 1)), dpi=100, squeeze=False)
    planes = ("largest section", "orthogonal 1", "orthogonal 2")
    for row, index in enumerate(worst):
        lesion = predictions.iloc[index]
        truth = LABEL_NAMES[int(lesion["label"])]
        said = LABEL_NAMES[int(lesion["p_metastasis"] >= threshold)]
        diameter = float(lesion_diameter_mm(lesion["volume_ml"]))
        for k in range(3):
            ax = axes[row, k]
            ax.imshow(patches[index, :, :, k], cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(planes[k], fontsize=8)
        axes[row, 0].set_ylabel(
            f"{lesion['lesion_id']}\n{truth}, {diameter:.0f} mm\nP = {lesion['p_metastasis']:.2f} ({said})",
            fontsize=7,
            color="black" if truth == said else "firebrick",
        )
    if not len(worst):
        axes[0, 0].set_title("no test lesion")
    fig.suptitle(f"The {len(worst)} worst-scored test lesions (red: called wrongly at P >= {threshold:g})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def evaluate_failures(
    predictions: pd.DataFrame, patches: np.ndarray, threshold: float, config: EvaluateConfig, out_dir: Path
) -> dict[str, Any]:
    """Where the model fails, written to ``out_dir``: ``breakdown.csv`` (``breakdown``: by lesion diameter,
    slice spacing and patient) and ``failures.png`` (``plot_failure_gallery``).

    Args:
        predictions: the test lesions as scored (``breakdown``'s columns), in the order of ``patches``.

    Returns:
        ``breakdown`` (its rows by diameter and by slice spacing, as records; per patient only in the CSV)
        and ``files``.
    """
    out_dir = Path(out_dir)
    table = breakdown(predictions, threshold, config.diameter_bins_mm, config.spacing_bins_mm)
    files = {"breakdown": out_dir / "breakdown.csv"}
    table.to_csv(files["breakdown"], index=False)
    files["failure_gallery"] = plot_failure_gallery(
        patches, predictions, threshold, config.gallery_lesions, out_dir / "failures.png"
    )
    rows = table[table["by"] != "patient"].replace({np.nan: None}).to_dict(orient="records")
    return {"breakdown": rows, "files": files}


def lesion_map_example(
    predictions: pd.DataFrame, lesions: pd.DataFrame, cases: pd.DataFrame, threshold: float, path: Path, title: str
) -> Path | None:
    """An example answer of the test set as ``predict`` draws it (the paper's Figure 5): the test CT with the most
    scored lesions, each outlined in its predicted class, on its reference mask.

    Drawn only where the scored lesions are the mask's own (their voxel counts match the mask's lesions): lesions
    an automatic segmentation found are numbered otherwise, and a map of them on the reference would mislead.

    Args:
        predictions: the scored test lesions (``lesion_id``, ``p_metastasis``).
        lesions: the lesion table (``contract.LESION_COLUMNS``: ``case_id``, ``instance``, ``n_voxels``,
            ``volume_ml``, centroids); ``cases``: the case table (``image_path``, ``mask_path``, ``mask_encoding``).

    Returns:
        ``path``, or None when nothing was drawn (no test lesion, or lesions not the mask's own).
    """
    from liverlesion.contract import LABEL_NAMES
    from liverlesion.figure import lesion_map_figure
    from liverlesion.imaging import load_nifti
    from liverlesion.lesions import instance_map

    scored = predictions[["lesion_id", "p_metastasis"]].merge(lesions, on="lesion_id", how="inner")
    if scored.empty:
        return None
    counts = scored["case_id"].value_counts()
    case_id = sorted(counts[counts == counts.max()].index)[0]
    case = cases.set_index("case_id").loc[case_id]
    image, meta = load_nifti(case["image_path"])
    mask, _ = load_nifti(case["mask_path"])
    instances, _ = instance_map(mask, case_id, case["mask_encoding"])
    voxels = np.bincount(instances.ravel())
    shown = scored[scored["case_id"] == case_id]
    if any(k >= len(voxels) or voxels[k] != n for k, n in zip(shown["instance"].astype(int), shown["n_voxels"])):
        return None
    predicted = (shown["p_metastasis"] >= threshold).astype(int)
    results = shown.assign(predicted=predicted, predicted_class=[LABEL_NAMES[int(k)] for k in predicted])
    return lesion_map_figure(
        image,
        meta.spacing,
        instances,
        results.reset_index(drop=True),
        Path(path),
        threshold=threshold,
        title=f"{case_id}: {title}",
    )


def choose_threshold(validation: pd.DataFrame, config: EvaluateConfig) -> tuple[float, dict[str, Any]]:
    """The decision threshold: ``config.threshold``, or the operating point ``config.operating_point`` chosen on
    the validation lesions (``label``, calibrated ``p_metastasis``) by ``metrics.threshold_for``.

    Returns:
        The threshold, and how it was chosen (``chosen``, in words; for an operating point also its ``metric``,
        ``at_least`` and what it gave on the validation lesions).
    """
    if config.operating_point is None:
        return config.threshold, {"chosen": f"fixed: evaluate.threshold {config.threshold:g}"}
    target = config.operating_point
    threshold = threshold_for(validation["label"], validation["p_metastasis"], target.metric, target.at_least)
    reached = classification_metrics(validation["label"], validation["p_metastasis"], threshold)
    return threshold, {
        "chosen": f"the highest threshold with {target.metric} >= {target.at_least:g} on the {len(validation)} "
        "validation lesions (evaluate.operating_point)",
        "metric": target.metric,
        "at_least": target.at_least,
        "validation": {k: reached[k] for k in ("recall", "specificity", "accuracy")},
    }
