"""Table 2 with uncertainty: patient-level bootstrap intervals, the report files and a joint ROC plot.

A test set of ~46 lesions from ~11 patients gives point estimates that move by several points
when one patient changes sides, so a bare "0.96" (the paper's style) says little. Every metric
here therefore carries a percentile bootstrap interval. Patients, not lesions, are resampled:
lesions of one patient share scanner, contrast phase and biology, so they are not independent,
and resampling lesions would pretend the test set holds 46 independent observations and give
intervals that are too narrow.

The metric definitions live in ``liverlesion.metrics`` (``classification_metrics`` and
``METRIC_NAMES``); this module only resamples and formats. The point estimate is
``classification_metrics`` on the whole test set. For speed the resamples are scored by a
vectorised path over per-patient weights (one ``classification_metrics`` call costs ~2.6 ms,
so 2000 calls would take ~5 s); every call of ``bootstrap_metrics`` checks that path against
``classification_metrics`` on materialised resamples, so the two cannot silently drift apart.

The paper's own Table 2 (``PAPER_TABLE2``) is reproduced for reference only: it was measured
on a different, in-house 63-patient cohort and is not comparable with numbers from this
pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from liverlesion.metrics import METRIC_NAMES, classification_metrics, metrics_from_counts, roc_auc

#: Human-readable column headers, in the order of ``METRIC_NAMES`` (the paper's Table 2 order).
METRIC_LABELS = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "f1": "F1 score",
    "roc_auc": "AUC",
    "precision": "Precision",
    "recall": "Recall",
    "specificity": "Specificity",
}

#: Table 2 of Perdigon Romero et al. (ISBI 2019), as reported, keyed by the paper's model names.
#: NPW: no pre-trained weights; IPW: ImageNet pre-trained weights. Measured on the authors'
#: in-house cohort (230 lesions, 63 patients, 46 test lesions); NOT comparable with this pipeline.
#: The second column's header is lost in the text we hold (``shared/reference/paper.txt``); the
#: paper names seven metrics and the remaining headers are Accuracy, F1, AUC, Precision, Recall,
#: Specificity, so it is read as balanced accuracy. The numbers are copied as printed, although
#: they are not all mutually consistent (e.g. the proposed model's precision 1.00 implies no false
#: positive, hence specificity 1.00, yet 0.85 is printed).
PAPER_TABLE2: dict[str, dict[str, float]] = {
    "SVM with texture features": dict(zip(METRIC_NAMES, (0.73, 0.71, 0.63, 0.78, 0.70, 0.81, 0.65))),
    "InceptionResNet-V2 (NPW)": dict(zip(METRIC_NAMES, (0.87, 0.85, 0.78, 0.92, 0.90, 0.90, 0.78))),
    "InceptionResNet-V2 (IPW)": dict(zip(METRIC_NAMES, (0.89, 0.90, 0.83, 0.97, 0.96, 0.87, 0.92))),
    "Inception-V3 (NPW)": dict(zip(METRIC_NAMES, (0.86, 0.91, 0.82, 0.97, 1.00, 0.81, 1.00))),
    "Proposed model (IPW)": dict(zip(METRIC_NAMES, (0.96, 0.93, 0.92, 0.97, 1.00, 0.94, 0.85))),
}

PAPER_TABLE2_LABEL = (
    "as reported by Perdigon Romero et al. on a different (in-house, 63-patient) cohort; not comparable"
)

#: Resamples re-scored with ``classification_metrics`` on every call, to pin the fast path to it.
_N_REFERENCE_CHECKS = 3


def patient_weights(groups: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """How many times each lesion appears in each patient-level resample.

    Drawing P patients with replacement and taking all lesions of each drawn patient is the
    same as giving every lesion the multiplicity of its patient in the draw; weights avoid
    building 2000 index lists and let the metrics be computed as matrix products.

    Args:
        groups: patient index (0..P-1) of each lesion.
        n_boot: number of resamples.
        rng: the seeded generator.

    Returns:
        Integer array (n_boot, n_lesions); row b, column i = times lesion i is in resample b.
    """
    n_patients = int(groups.max()) + 1
    draws = rng.integers(0, n_patients, size=(n_boot, n_patients))
    per_patient = np.zeros((n_boot, n_patients), dtype=np.int64)
    np.add.at(per_patient, (np.arange(n_boot)[:, None], draws), 1)
    return per_patient[:, groups]


def _weighted_metrics(
    y_true: np.ndarray, probability: np.ndarray, weights: np.ndarray, threshold: float
) -> dict[str, np.ndarray]:
    """``classification_metrics`` for many resamples at once, each given as lesion weights.

    The threshold metrics come from ``metrics.metrics_from_counts`` on weighted confusion counts,
    with NaN where a metric is undefined in a resample (no cyst drawn: no specificity); ROC AUC
    is the Mann-Whitney statistic (ties count 1/2), which equals scikit-learn's trapezoidal ROC AUC
    on the materialised resample, NaN when one class is absent. ``bootstrap_metrics`` checks a few
    resamples against ``classification_metrics`` on every call.
    """
    w = weights.astype(float)
    positive = y_true == 1
    called = probability >= threshold
    metrics = metrics_from_counts(
        tp=w @ (positive & called),
        fp=w @ (~positive & called),
        fn=w @ (positive & ~called),
        tn=w @ (~positive & ~called),
        undefined=np.nan,
    )

    p_pos, p_neg = probability[positive], probability[~positive]
    beats = (p_pos[:, None] > p_neg[None, :]) + 0.5 * (p_pos[:, None] == p_neg[None, :])
    w_pos, w_neg = w[:, positive], w[:, ~positive]
    pairs = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    concordant = np.einsum("bi,ij,bj->b", w_pos, beats, w_neg)
    roc_auc = np.full(len(w), np.nan)
    np.divide(concordant, pairs, out=roc_auc, where=pairs > 0)
    return {**metrics, "roc_auc": roc_auc}


def _check_against_reference(y_true, probability, weights, threshold, fast: dict[str, np.ndarray]) -> None:
    """Re-score a few resamples with ``classification_metrics``; raise if the fast path differs.

    Cheap (~10 ms) insurance: if ``metrics.py`` changes a definition or a zero-denominator
    convention, the bootstrap fails loudly instead of reporting intervals for another metric.
    """
    if set(fast) != set(METRIC_NAMES):
        raise RuntimeError(f"bootstrap metrics {sorted(fast)} differ from METRIC_NAMES {sorted(METRIC_NAMES)}")
    for b in range(min(_N_REFERENCE_CHECKS, len(weights))):
        rows = np.repeat(np.arange(len(y_true)), weights[b])
        reference = classification_metrics(y_true[rows], probability[rows], threshold=threshold, undefined=np.nan)
        for name in METRIC_NAMES:
            if not np.isclose(fast[name][b], reference[name], rtol=0.0, atol=1e-9, equal_nan=True):
                raise RuntimeError(
                    f"vectorised {name} ({fast[name][b]!r}) != classification_metrics ({reference[name]!r}) "
                    f"on resample {b}: update report._weighted_metrics to match liverlesion.metrics"
                )


def bootstrap_metrics(
    y_true,
    probability,
    groups,
    threshold: float,
    n_boot: int,
    seed: int,
    confidence: float,
    undefined: float = 0.0,
) -> pd.DataFrame:
    """The seven metrics with patient-level percentile bootstrap intervals.

    Each resample draws as many patients as the test set holds, with replacement, and keeps
    every lesion of every drawn patient (a patient drawn twice contributes its lesions twice).
    Resampling patients rather than lesions respects the correlation between lesions of one
    patient; with few patients the intervals are honestly wide.

    Args:
        y_true: 0 cyst, 1 metastasis, one per lesion.
        probability: predicted probability of metastasis, one per lesion.
        groups: patient key of each lesion (any sortable values; lesions sharing a key are
            resampled together).
        threshold: probability at or above which a lesion is called a metastasis.
        n_boot: number of resamples.
        seed: seed of ``numpy.random.default_rng``; the same seed and inputs give identical
            intervals, independent of the order of the lesions.
        confidence: coverage of the two-sided percentile interval.
        undefined: the estimate of a metric without a denominator on the whole sample (specificity of a cohort
            without cysts): 0 as the paper's Table 2 convention, or NaN where such a cohort is scored (n/a).

    Returns:
        One row per metric, in ``METRIC_NAMES`` order, with columns ``metric``, ``estimate``
        (``classification_metrics`` on the full sample), ``lower``, ``upper`` and
        ``n_boot_valid`` (resamples in which the metric is defined: ROC AUC needs both classes,
        specificity a cyst, recall a metastasis, precision a lesion called metastasis; a
        resample where a metric is undefined is left out of that metric's interval, never
        counted as 0).
        ``DataFrame.attrs`` holds ``n_boot``, ``n_patients``, ``n_lesions``, ``confidence``,
        ``seed`` and ``threshold`` for the report. A percentile interval need not contain the
        estimate when the bootstrap distribution is skewed; lower/upper are NaN where no
        resample is valid.

    Raises:
        ValueError: empty input, lengths differ, labels other than 0/1, NaN probabilities or
            patient keys, ``n_boot < 1`` or ``confidence`` outside (0, 1).
    """
    y = np.asarray(y_true).ravel()
    p = np.asarray(probability, dtype=float).ravel()
    g = np.asarray(groups).ravel()
    if y.size == 0 or not (y.size == p.size == g.size):
        raise ValueError(f"need one label, probability and patient key per lesion (got {y.size}, {p.size}, {g.size})")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 (cyst) or 1 (metastasis)")
    if np.isnan(p).any():
        raise ValueError("probabilities must not be NaN")
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1 (got {n_boot})")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1) (got {confidence})")
    y = y.astype(int)
    patient, keys = pd.factorize(pd.Series(g), sort=True)  # sorted keys: lesion order does not matter
    if (patient < 0).any():
        raise ValueError("patient keys must not be missing")

    estimate = classification_metrics(y, p, threshold=threshold, undefined=undefined)
    weights = patient_weights(patient, n_boot, np.random.default_rng(seed))
    resampled = _weighted_metrics(y, p, weights, threshold)
    _check_against_reference(y, p, weights, threshold, resampled)

    tail = (1.0 - confidence) / 2.0
    rows = []
    for name in METRIC_NAMES:
        values = resampled[name][~np.isnan(resampled[name])]
        lower, upper = np.quantile(values, [tail, 1.0 - tail]) if values.size else (np.nan, np.nan)
        rows.append(
            {
                "metric": name,
                "estimate": float(estimate[name]),
                "lower": float(lower),
                "upper": float(upper),
                "n_boot_valid": int(values.size),
            }
        )
    table = pd.DataFrame(rows, columns=["metric", "estimate", "lower", "upper", "n_boot_valid"])
    table.attrs.update(
        n_boot=int(n_boot),
        n_patients=len(keys),
        n_lesions=int(y.size),
        confidence=float(confidence),
        seed=seed,
        threshold=float(threshold),
    )
    return table


def _format_cell(estimate: float, lower: float, upper: float) -> str:
    if np.isnan(estimate):
        return "n/a"
    if np.isnan(lower) or np.isnan(upper):
        return f"{estimate:.2f} [n/a]"
    return f"{estimate:.2f} [{lower:.2f}, {upper:.2f}]"


def _by_metric(result: pd.DataFrame) -> pd.DataFrame:
    indexed = result.set_index("metric")
    missing = [name for name in METRIC_NAMES if name not in indexed.index]
    if missing:
        raise ValueError(f"result lacks metrics {missing}")
    return indexed.loc[list(METRIC_NAMES)]


def table2(results: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The paper's Table 2 layout with intervals: models x metrics, cells ``0.87 [0.78, 0.94]``.

    Two decimals as in the paper, so our row reads like theirs, but with the interval that the
    paper omits. Models keep the order of ``results``; columns follow ``METRIC_NAMES``.

    Args:
        results: model name -> ``bootstrap_metrics`` output.

    Returns:
        String DataFrame indexed by model (index name ``model``), one column per metric.
    """
    rows = {}
    for model, result in results.items():
        indexed = _by_metric(result)
        rows[model] = [_format_cell(*indexed.loc[name, ["estimate", "lower", "upper"]]) for name in METRIC_NAMES]
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(METRIC_NAMES))
    table.index.name = "model"
    return table


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])


def _interval_note(results: Mapping[str, pd.DataFrame]) -> str:
    """One sentence on how the intervals were made, per distinct bootstrap setting."""
    settings: dict[tuple, list[str]] = {}
    for model, result in results.items():
        a = result.attrs
        key = (a.get("confidence"), a.get("n_boot"), a.get("n_patients"), a.get("n_lesions"))
        settings.setdefault(key, []).append(model)
    parts = []
    for (conf, n_boot, n_patients, n_lesions), models in settings.items():
        level = f"{conf:.0%}" if conf is not None else "95%"
        boot = f"{n_boot} resamples" if n_boot is not None else "an unrecorded number of resamples"
        who = f"{n_patients} patients" if n_patients is not None else "an unrecorded number of patients"
        if n_lesions is not None:
            who += f" ({n_lesions} lesions)"
        scope = "" if len(settings) == 1 else f" ({', '.join(models)})"
        parts.append(f"{level} patient-level percentile bootstrap intervals, {boot} of {who}{scope}")
    return (
        "Brackets: " + "; ".join(parts) + ". Patients, not lesions, were resampled; "
        "a ROC AUC interval uses only resamples that hold both classes."
    )


def write_report(results: Mapping[str, pd.DataFrame], out_dir, title: str, cohort_note: str) -> dict[str, Path]:
    """Write ``table2.csv`` (numbers) and ``table2.md`` (for people) into ``out_dir``.

    The CSV keeps full precision for downstream use; the Markdown shows two decimals with
    intervals, says how they were made, and puts the paper's Table 2 underneath, labelled as a
    different cohort, so that nobody reads the two tables as a head-to-head comparison.

    Args:
        results: model name -> ``bootstrap_metrics`` output.
        out_dir: folder to write into (created if absent).
        title: Markdown heading.
        cohort_note: a sentence on the cohort and split the results come from.

    Returns:
        ``{"csv": path to table2.csv, "md": path to table2.md}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    records = []
    for model, result in results.items():
        indexed = _by_metric(result)
        record: dict[str, object] = {"model": model}
        for name in METRIC_NAMES:
            record[name] = float(indexed.loc[name, "estimate"])
            record[f"{name}_lower"] = float(indexed.loc[name, "lower"])
            record[f"{name}_upper"] = float(indexed.loc[name, "upper"])
        records.append(record)
    columns = ["model"] + [c for name in METRIC_NAMES for c in (name, f"{name}_lower", f"{name}_upper")]
    csv_path = out / "table2.csv"
    pd.DataFrame(records, columns=columns).to_csv(csv_path, index=False)

    header = ["Model"] + [METRIC_LABELS[name] for name in METRIC_NAMES]
    ours = table2(results)
    paper_rows = [[model] + [f"{values[name]:.2f}" for name in METRIC_NAMES] for model, values in PAPER_TABLE2.items()]
    md = "\n".join(
        [
            f"# {title}",
            "",
            cohort_note,
            "",
            _markdown_table(header, [[model, *ours.loc[model]] for model in ours.index]),
            "",
            _interval_note(results),
            "",
            "## The paper's Table 2, for reference only",
            "",
            f"Table 2 of the ISBI 2019 paper, {PAPER_TABLE2_LABEL}. Point estimates only (the paper "
            "reports no intervals); NPW read as no pre-trained weights, IPW as ImageNet pre-trained "
            "weights. The second column's header is lost in our copy of the paper's text; it is read "
            "as balanced accuracy, the one metric of the seven not otherwise named.",
            "",
            _markdown_table(header, paper_rows),
            "",
        ]
    )
    md_path = out / "table2.md"
    md_path.write_text(md, encoding="utf-8")
    return {"csv": csv_path, "md": md_path}


def plot_roc_curves(curves: Mapping[str, tuple], path) -> Path:
    """All models' ROC curves on one PNG, AUC in the legend, with the chance diagonal.

    One plot makes the models comparable at a glance, which separate per-model PNGs do not. A
    model whose labels hold one class has no ROC curve; it is listed in the legend as undefined
    rather than dropped silently.

    Args:
        curves: model name -> (y_true, probability of metastasis).
        path: PNG file to write (parent folders are created).

    Returns:
        ``path`` as a ``Path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
    for model, (y_true, probability) in curves.items():
        y = np.asarray(y_true).astype(int)
        p = np.asarray(probability, dtype=float)
        auc = roc_auc(y, p)
        if np.isnan(auc):
            ax.plot([], [], lw=2, label=f"{model} (AUC undefined: one class)")
            continue
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, lw=2, label=f"{model} (AUC = {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title("ROC, metastasis vs cyst (test)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def segmentation_markdown(method: str, summary: dict[str, Any], counts: dict[str, Any], detection_dice: float) -> str:
    """``segmentation.md``: the segmentation table of the test patients (``segmentation.segmentation_summary``)
    and, end to end with the classifier, what became of each reference lesion (``segmentation.end_to_end``)."""
    rows = [
        ("liver Dice", summary["liver_dice"]),
        ("liver ASSD (mm)", summary["liver_assd_mm"]),
        ("lesion Dice (all lesions of a case)", summary["lesion_dice"]),
        ("lesion ASSD (mm)", summary["lesion_assd_mm"]),
        ("lesions found / reference lesions", f"{summary['found_lesions']} / {summary['reference_lesions']}"),
        ("detection recall, metastases", summary["detection_recall_metastasis"]),
        ("detection recall, cysts", summary["detection_recall_cyst"]),
        ("invented lesions per patient", summary["false_positives_per_patient"]),
        ("seconds per CT", summary["seconds_per_case"]),
    ]
    lines = [
        f"# Segmentation: {method}",
        "",
        f"On the {summary['cases']} CTs of the {summary['patients']} test patients "
        f"(a reference lesion is found at a Dice of at least {detection_dice}).",
        "",
        "| measure | value |",
        "| --- | --- |",
    ]
    lines += [
        f"| {name} | {value:.3f} |" if isinstance(value, float) else f"| {name} | {value} |" for name, value in rows
    ]
    lines += [
        "",
        "End to end (test patients): each reference lesion found by segmentation and classified, or missed.",
        "",
        "| | metastases | cysts |",
        "| --- | --- | --- |",
    ]
    for what in ("reference", "found_called_right", "found_called_wrong", "missed"):
        lines.append(f"| {what.replace('_', ' ')} | {counts[f'{what}_metastasis']} | {counts[f'{what}_cyst']} |")
    lines += [
        "",
        f"Invented lesions (matching no reference lesion): {counts['invented']}. End-to-end sensitivity "
        f"(metastases found and called metastasis / all): {counts['recall']:.3f}; end-to-end "
        f"specificity (cysts found and called cyst / all): {counts['specificity']:.3f}.",
    ]
    return "\n".join(lines) + "\n"


def evaluation_markdown(
    method: str, cascade: str, data_version: str, cases: Any, summary: dict[str, Any], detection_dice: float
) -> str:
    """``segmentation.md`` of ``liverlesion evaluate``: the cohort's figures, detection by lesion size, and one
    row per case (``cases``: ``segmentation.SEGMENTATION_CASE_COLUMNS`` rows)."""

    def number(value: Any, digits: int = 3) -> str:
        return "n/a" if value is None or value != value else f"{value:.{digits}f}"

    lines = [
        f"# Segmentation: {method}" + (f" ({cascade})" if cascade else ""),
        "",
        f"Cohort {data_version[:12]}: {summary['cases']} CT(s) of {summary['patients']} patient(s). A reference "
        f"lesion is found when an automatic lesion overlaps it with a Dice of at least {detection_dice}.",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| liver Dice, median (min) | {number(summary['liver_dice_median'])} ({number(summary['liver_dice_min'])}) |",
        f"| liver ASSD (mm), mean | {number(summary['liver_assd_mm'], 2)} |",
        f"| lesion Dice, mean per CT | {number(summary['lesion_dice'])} |",
        f"| lesions found / reference lesions | {summary['found_lesions']} / {summary['reference_lesions']} |",
        f"| invented lesions (all; median per patient) | {summary['invented_lesions']} "
        f"({number(summary['invented_per_patient_median'], 1)}) |",
        f"| automatic lesions outside the reference liver | {number(summary['outside_liver_lesions'], 0)} |",
        f"| seconds per CT, mean (max) | {number(summary['seconds_per_case'], 1)} "
        f"({number(summary['seconds_per_case_max'], 1)}) |",
        "",
        "| reference lesion size | lesions | found | recall |",
        "| --- | --- | --- | --- |",
        *(f"| {s['size']} | {s['reference']} | {s['found']} | {number(s['recall'])} |" for s in summary["by_size"]),
        "",
        "| case | liver Dice | lesion Dice | found / reference | invented | outside liver | seconds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *(
            f"| {c.case_id} | {number(c.liver_dice)} | {number(c.lesion_dice)} | {c.found_lesions} / "
            f"{c.reference_lesions} | {c.invented_lesions} | {number(c.outside_liver_lesions, 0)} | {c.seconds:.1f} |"
            for c in cases.itertuples(index=False)
        ),
        "",
    ]
    return "\n".join(lines)


def strict_json(value: Any, **options: Any) -> str:
    """JSON any parser reads: a measure not taken (NaN) is null, never ``NaN`` (``options``: ``json.dumps``'s)."""
    import json

    def strict(item: Any) -> Any:
        if isinstance(item, float) and item != item:
            return None
        if isinstance(item, dict):
            return {k: strict(v) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return [strict(v) for v in item]
        return item

    return json.dumps(strict(value), allow_nan=False, **options)
