"""The model card of a registered model version, built from what was actually trained.

The card is a JSON-able dict (:func:`build_model_card`) and a Markdown document
(:func:`render_markdown`) for a radiologist and an ML engineer: what the model is (the backbone and
head of the profile it was trained with), its input contract, the data and split it saw, its test
metrics with patient-level intervals, how it was trained, its lineage, its intended use and its
known limitations, some of which follow from the data (synthetic, single-source, small test set).

Domain layer: numpy, pandas and the standard library only (no MLflow, ZenML, DVC or Keras).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from liverlesion.calibration import Calibration
from liverlesion.contract import LABEL_CYST, LABEL_METASTASIS, LABEL_NAMES

CARD_SCHEMA_VERSION = 1
#: what P(metastasis) is on a card of a version registered before calibration existed
UNCALIBRATED = "the network's own probability"

SETS = ("train", "val", "test")
#: the Keras applications' names of the profile's ``train.backbone`` keys
BACKBONE_NAMES = {"inception_v3": "InceptionV3", "inception_resnet_v2": "InceptionResNetV2"}
#: a test set below this many lesions is called small
SMALL_TEST_LESIONS = 50
#: a 95% interval wider than this (on a 0-1 metric) is called wide
WIDE_INTERVAL = 0.2
#: lineage keys too bulky for the card (the profile itself is in the card's sections)
_LINEAGE_LEFT_OUT = ("config",)
#: a version's tags for its figures on a cohort scored after registration (``liverlesion evaluate --model``):
#: ``external.<cohort hash, 12 characters>.<metric | lesions | patients | run | at>``
EXTERNAL_TAG_PREFIX = "external."
_EXTERNAL_FIELDS = ("lesions", "patients", "run", "at")
#: the reporting guideline whose items the card's sections answer, in its order
TRIPOD_AI = (
    "TRIPOD+AI: G.S. Collins et al. TRIPOD+AI statement: updated guidance for reporting clinical prediction "
    "models that use regression or machine learning methods. BMJ 2024;385:e078378."
)

REFERENCE = (
    "F. Perdigon Romero, A. Diler, G. Bisson-Gregoire, S. Turcotte, R. Lapointe, F. Vandenbroucke-Menu, "
    "A. Tang, S. Kadoury. End-to-End Discriminative Deep Network for Liver Lesion Classification. "
    "IEEE International Symposium on Biomedical Imaging (ISBI), 2019. arXiv:1901.09483."
)
INTENDED_USE = (
    "Research and decision support for liver lesions already found and segmented in CT: it gives the "
    "probability that a segmented lesion is a colorectal liver metastasis rather than a benign cyst. "
    "It is not a diagnosis and not a substitute for a radiologist."
)
_IN_SCOPE = [
    "liver lesions already detected and segmented (a lesion mask on the CT's grid) by a person or a validated tool",
    "a second opinion or triage aid for a radiologist, who makes and owns every diagnosis",
    "research: reproducing and extending Perdigon Romero et al. (ISBI 2019)",
]
_OUT_OF_SCOPE = [
    "diagnosis or treatment decisions without a radiologist",
    "finding or segmenting lesions (it classifies lesions it is given; it does not look for them)",
    "lesions other than colorectal liver metastases and simple cysts, or organs other than the liver",
    "screening populations or patients unlike those of the training data",
]
_CHANNELS = [
    "channel 0: the plane in which the lesion's cross-section is largest",
    "channel 1: the first plane orthogonal to it, through the lesion",
    "channel 2: the second orthogonal plane, through the lesion",
]
_ORIGIN_WORDS = {
    "synthetic": "synthetic phantom CT (not patient data)",
    "imported": "imported CT",
    "unknown": "CT of unrecorded origin",
}
_METRIC_WORDS = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "f1": "F1 score",
    "roc_auc": "ROC AUC",
    "precision": "precision (PPV for metastasis)",
    "recall": "sensitivity (recall of metastases)",
    "specificity": "specificity (cysts called cysts)",
}


# --- JSON-able values -------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """``value`` as plain JSON types: lists for tuples, Python numbers, None for NaN/inf and NA."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    return value if isinstance(value, str) else str(value)


def _number(value: Any, digits: int = 3) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return round(number, digits) if math.isfinite(number) else None


# --- data -------------------------------------------------------------------------------------


def _labels(table: pd.DataFrame) -> pd.Series:
    if "label" not in table:
        return pd.Series(np.nan, index=table.index, dtype=float)
    return pd.to_numeric(table["label"], errors="coerce")


def _class_counts(table: pd.DataFrame) -> dict[str, int]:
    labels = _labels(table)
    return {
        LABEL_NAMES[LABEL_CYST]: int((labels == LABEL_CYST).sum()),
        LABEL_NAMES[LABEL_METASTASIS]: int((labels == LABEL_METASTASIS).sum()),
        "untyped": int(labels.isna().sum()),
    }


def _origin(meta: dict | None) -> dict[str, Any]:
    """Where the cohort folder came from, as recorded in its ``cohort.json``."""
    meta = meta or {}
    if meta.get("generator") == "liverlesion.phantom" or "generator_version" in meta or "spec" in meta:
        spec = meta.get("spec") if isinstance(meta.get("spec"), dict) else {}
        return {
            "kind": "synthetic",
            "summary": "synthetic phantom CT generated by "
            + str(meta.get("generator", "the phantom generator"))
            + (f" {meta['generator_version']}" if meta.get("generator_version") else "")
            + (f", seed {spec['seed']}" if "seed" in spec else ""),
            "generator": meta.get("generator"),
            "generator_version": meta.get("generator_version"),
            "spec": spec,
            "description": meta.get("description"),
        }
    imports = [i for i in meta.get("imports", []) if isinstance(i, dict)]
    if not imports and "layout" in meta:
        imports = [{"layout": meta["layout"]}]
    deid = meta.get("deidentification") if isinstance(meta.get("deidentification"), dict) else {}
    removed = deid.get("PatientIdentityRemoved", meta.get("PatientIdentityRemoved"))
    if imports or removed is not None or meta.get("source") == "liverlesion import":
        layouts = sorted({str(i["layout"]) for i in imports if i.get("layout")})
        return {
            "kind": "imported",
            "summary": f"imported with {meta.get('source', 'an importer')} from "
            + (f"layout(s) {', '.join(layouts)}" if layouts else "an unrecorded layout")
            + f" in {len(imports)} import(s)"
            + ("; de-identified (PatientIdentityRemoved YES)" if removed == "YES" else ""),
            "source": meta.get("source"),
            "layouts": layouts,
            "imports": [
                {k: i.get(k) for k in ("layout", "importer_version", "cases", "lesions", "refused") if k in i}
                for i in imports
            ],
            "deidentified": removed == "YES",
            "deidentification_method": deid.get("DeidentificationMethod"),
        }
    return {"kind": "unknown", "summary": "not recorded (no cohort.json, or one the card cannot read)"}


def cohort_summary(cases: pd.DataFrame, lesions: pd.DataFrame, cohort_meta: dict | None) -> dict:
    """Patients, cases, lesions by class, lesion volumes (mL) and the data's origin.

    Args:
        cases: the ingested case table (``patient_key``, ``case_id``, ...).
        lesions: the lesion table (``label`` NA for untyped lesions, ``volume_ml``).
        cohort_meta: the data folder's ``cohort.json`` (None if absent).
    """
    keys = cases["patient_key"] if "patient_key" in cases else lesions.get("patient_key", pd.Series(dtype=str))
    volumes = (
        pd.to_numeric(lesions["volume_ml"], errors="coerce").dropna()
        if "volume_ml" in lesions
        else pd.Series(dtype=float)
    )
    volume = (
        {"min": _number(volumes.min()), "median": _number(volumes.median()), "max": _number(volumes.max())}
        if len(volumes)
        else {"min": None, "median": None, "max": None}
    )
    origin = _origin(cohort_meta)
    return _plain(
        {
            "origin": origin["kind"],
            "origin_details": origin,
            "patients": int(pd.Series(keys).nunique()),
            "cases": int(cases["case_id"].nunique()) if "case_id" in cases else int(len(cases)),
            "lesions": int(len(lesions)),
            "lesions_by_class": _class_counts(lesions),
            "volume_ml": volume,
        }
    )


def split_sizes(manifest: pd.DataFrame) -> dict:
    """Per set (train/val/test): patients, lesions, cysts and metastases."""
    sizes = {}
    for name in SETS:
        part = manifest[manifest["set"] == name]
        counts = _class_counts(part)
        sizes[name] = {
            "patients": int(part["patient_key"].nunique()),
            "lesions": int(len(part)),
            "cysts": counts[LABEL_NAMES[LABEL_CYST]],
            "metastases": counts[LABEL_NAMES[LABEL_METASTASIS]],
        }
    return sizes


# --- external evaluations ----------------------------------------------------------------------


def external_evaluations_from_tags(tags: dict[str, str]) -> list[dict[str, Any]]:
    """A version's external evaluations as its tags record them (``EXTERNAL_TAG_PREFIX``), oldest first.

    Returns:
        One dict per cohort: ``cohort`` (its hash, 12 characters), ``lesions``, ``patients``, ``run`` (the MLflow
        run of the evaluation), ``at`` (UTC, ISO 8601) and ``metrics`` (name -> value; NaN where undefined).
    """
    groups: dict[str, dict[str, str]] = {}
    for key, value in tags.items():
        if key.startswith(EXTERNAL_TAG_PREFIX):
            cohort, _, name = key.removeprefix(EXTERNAL_TAG_PREFIX).partition(".")
            if name:
                groups.setdefault(cohort, {})[name] = value
    found = []
    for cohort, fields in groups.items():
        metrics = {}
        for name, value in fields.items():
            if name not in _EXTERNAL_FIELDS:
                try:
                    metrics[name] = float(value)
                except ValueError:
                    continue
        found.append(
            {
                "cohort": cohort,
                "lesions": int(fields["lesions"]) if fields.get("lesions", "").isdigit() else None,
                "patients": int(fields["patients"]) if fields.get("patients", "").isdigit() else None,
                "run": fields.get("run"),
                "at": fields.get("at"),
                "metrics": metrics,
            }
        )
    return sorted(found, key=lambda e: (e["at"] or "", e["cohort"]))


def with_external_evaluations(card: dict, evaluations: list[dict], version: str | None = None) -> dict:
    """The card with every external evaluation of its version (``external_evaluations``: dicts with
    ``cohort``, ``origin``, ``lesions``, ``patients``, ``threshold``, ``at``, ``run`` and ``metrics``, each metric
    a value or ``{estimate, lower, upper}``). An evaluation on the cohort the version was trained on is marked:
    it is no external test."""
    trained_on = str(card.get("data", {}).get("version", ""))
    entries = []
    for evaluation in evaluations:
        metrics = {}
        for name, value in (evaluation.get("metrics") or {}).items():
            row = value if isinstance(value, dict) else {"estimate": value}
            metrics[name] = {k: _number(row.get(k), 4) for k in ("estimate", "lower", "upper")}
        cohort = str(evaluation.get("cohort", ""))
        entries.append(
            {
                **{k: evaluation.get(k) for k in ("cohort", "origin", "lesions", "patients", "threshold", "at", "run")},
                "training_cohort": bool(cohort) and trained_on.startswith(cohort),
                "metrics": metrics,
            }
        )
    model = {**card["model"], "version": version or card["model"].get("version")}
    return _plain({**card, "model": model, "external_evaluations": entries})


# --- the card ---------------------------------------------------------------------------------


def _initialisation(weights: str | None) -> str:
    if weights is None or str(weights).lower() in {"", "none", "null"}:
        return "random initial weights (NPW, no pre-training)"
    if weights == "imagenet":
        return "ImageNet weights (IPW)"
    return f"ImageNet weights (IPW) from the file {weights}"


def _head(dense_units: int, dropout: float) -> str:
    return (
        f"global average pooling -> FC-{dense_units} (ReLU) -> Dropout {dropout:g} -> FC-{dense_units} (ReLU) "
        f"-> Dropout {dropout:g} -> FC-2 softmax"
    )


def _training(train: dict, profile: dict) -> dict[str, Any]:
    epochs = train.get("epochs")
    monitor = {"val_loss": "validation-loss", "val_accuracy": "validation-accuracy"}[train["monitor"]]
    kept = (
        f"the epoch with the {'lowest validation loss' if monitor == 'validation-loss' else 'best validation accuracy'}"
        f" kept (of equal ones the {train['tie_break']})"
    )
    if train.get("lr_schedule") == "cosine":
        schedule = f"cosine decay from {train['learning_rate']:g} to 0 over the {epochs} epochs"
    elif train.get("lr_patience"):
        schedule = (
            f"x{train['lr_factor']:g} after {train['lr_patience']} epochs without a {monitor} "
            f"gain, down to {train['min_lr']:g}"
        )
    else:
        schedule = "constant"
    if train.get("early_stopping_patience"):
        stopping = f"after {train['early_stopping_patience']} epochs without a {monitor} gain; {kept}"
    else:
        stopping = f"none: all {epochs} epochs run, {kept}"
    if train.get("augment"):
        augmentation = f"random rotation up to {train['rotation_deg']:g} deg, shift up to {train['shift_px']} px" + (
            ", horizontal and vertical flips" if train.get("flips") else ""
        )
    else:
        augmentation = "none"
    smoothing = train.get("label_smoothing") or 0.0
    return {
        "profile": profile.get("name"),
        "profile_description": profile.get("description", ""),
        "optimiser": "Adam",
        "loss": "categorical cross-entropy" + (f", label smoothing {smoothing:g}" if smoothing else ""),
        "learning_rate": train.get("learning_rate"),
        "batch_size": train.get("batch_size"),
        "epochs": epochs,
        "lr_schedule": schedule,
        "early_stopping": stopping,
        "augmentation": augmentation,
        "bn_momentum": train.get("bn_momentum"),
        "seed": train.get("seed"),
        "settings": dict(train),
    }


def _evaluation(
    metrics: dict[str, float], intervals: dict[str, list[float]], precision: str, profile: dict, split: dict
) -> dict[str, Any]:
    rows = {}
    for name, value in metrics.items():
        bounds = list(intervals.get(name) or [None, None])[:2]
        lower, upper = (_plain(b) for b in bounds) if len(bounds) == 2 else (None, None)
        width = upper - lower if lower is not None and upper is not None else None
        rows[name] = {"estimate": _plain(value), "lower": lower, "upper": upper, "width": width}
    test = split.get("test", {})
    evaluate = profile.get("evaluate", {})
    return {
        "set": "test",
        "lesions": test.get("lesions"),
        "patients": test.get("patients"),
        "interval": f"{evaluate['bootstrap']['confidence']:.0%} percentile bootstrap over patients "
        f"({evaluate['bootstrap']['resamples']} resamples)",
        "precision": precision,
        "precision_setting": evaluate.get("precision"),
        "threshold": evaluate["threshold"],
        "metrics": rows,
    }


def _limitations(cohort: dict, split: dict, evaluation: dict, lesions_from: str = "reference") -> list[str]:
    items = [
        "Two classes only: every lesion is called a colorectal metastasis or a benign cyst. Other lesions "
        "(hemangioma, focal nodular hyperplasia, hepatocellular carcinoma, abscess, metastases of other "
        "primaries, ...) "
        "are forced into one of the two.",
        "Depends on the lesion mask: the patches are cut around the segmented lesion, so a missed, merged or "
        "badly drawn lesion gives a wrong or meaningless result; it does not find lesions itself.",
    ]
    if lesions_from != "reference":
        items.append(
            f"Trained on the lesions a {lesions_from} segmentation found, labelled by the reference lesion "
            "holding each: lesions it missed were never seen in training, and its test metrics are those of "
            "the lesions it found (the run's segmentation.md counts the missed and invented ones)."
        )
    origin = cohort.get("origin_details", {})
    kind = cohort.get("origin", origin.get("kind", "unknown"))
    if kind == "synthetic":
        items.append(
            "Trained and tested on synthetic phantom CT, not on patients: its metrics say nothing about "
            "performance on real CT, and it must not be used on patients before validation on patient data."
        )
    elif kind == "imported":
        layouts = origin.get("layouts", [])
        if len(layouts) <= 1:
            where = f"one source layout ({layouts[0]})" if layouts else "one source"
            items.append(
                f"Single-source data: all {cohort.get('cases')} cases come from {where}, likely one centre or "
                "dataset; performance on other scanners, protocols and populations is unknown."
            )
    else:
        items.append(
            "The origin of the training data is not recorded: who the patients were, and whether they "
            "were patients at all, is unknown."
        )
    n_test = split.get("test", {}).get("lesions", 0)
    wide = [
        f"{name} {row['lower']:.2f}-{row['upper']:.2f}"
        for name, row in evaluation["metrics"].items()
        if row["width"] is not None and row["width"] > WIDE_INTERVAL
    ]
    if n_test < SMALL_TEST_LESIONS or wide:
        reasons = []
        if n_test < SMALL_TEST_LESIONS:
            reasons.append(
                f"{n_test} test lesions of {split.get('test', {}).get('patients', 0)} patients "
                f"(fewer than {SMALL_TEST_LESIONS})"
            )
        if wide:
            reasons.append(f"95% intervals wider than {WIDE_INTERVAL:g}: {', '.join(wide)}")
        items.append("Small test set: " + "; ".join(reasons) + ". The metrics are uncertain estimates.")
    untyped = cohort.get("lesions_by_class", {}).get("untyped", 0)
    if untyped:
        items.append(f"{untyped} lesion(s) of the cohort had no type and were left out of training and testing.")
    return items


def _calibration(calibration: dict | None) -> dict[str, Any]:
    fitted = Calibration.from_dict((calibration or {}).get("calibration"))
    values = (calibration or {}).get("calibration_metrics", {})
    bounds = (calibration or {}).get("calibration_intervals", {})
    return {
        **fitted.to_dict(),
        "description": fitted.describe(),
        "fitted_on_set": "validation",
        "metrics": {
            name: {
                "estimate": values[name],
                "lower": bounds.get(name, [None, None])[0],
                "upper": bounds.get(name, [None, None])[1],
            }
            for name in ("brier_network", "ece_network", "brier", "ece")
            if name in values
        },
    }


def build_model_card(
    *,
    profile: dict,
    metrics: dict[str, float],
    intervals: dict[str, list[float]],
    input_shape: tuple,
    n_parameters: int,
    precision: str,
    data_version: str,
    cohort: dict,
    split: dict,
    lineage: dict[str, str],
    model_name: str,
    version: str | None = None,
    evaluated: dict | None = None,
) -> dict:
    """The card of one model version as a JSON-able dict (``CARD_SCHEMA_VERSION``).

    Args:
        profile: the run profile as trained (``Profile.model_dump(mode="json")``).
        metrics: test metrics; ``intervals``: metric -> [lower, upper] (95%, patient bootstrap).
        input_shape: the network's input per lesion, (rows, cols, 3) (a leading batch ``None`` is dropped).
        precision: the precision the test set was scored in (``float32``, ``bfloat16``).
        cohort: :func:`cohort_summary`; ``split``: :func:`split_sizes`.
        lineage: the registered version's lineage tags (the ``config`` JSON is left out).
        evaluated: the evaluate step's summary: its ``calibration`` (``Calibration.to_dict``),
            ``calibration_metrics`` (Brier score and ECE, calibrated and the network's own),
            ``calibration_intervals`` and ``breakdown`` (``evaluation.breakdown`` rows by diameter and slice
            spacing); none: the probability is the network's own, unmeasured, and no breakdown.
    """
    train = dict(profile.get("train", {}))
    patches = dict(profile.get("patches", {}))
    split_settings = dict(profile.get("split", {}))
    evaluate = dict(profile.get("evaluate", {}))
    backbone_key = str(train["backbone"])
    backbone = BACKBONE_NAMES.get(backbone_key, backbone_key)
    units, dropout = int(train["dense_units"]), float(train["dropout"])
    weights = train.get("weights")
    shape = [int(s) for s in input_shape if s is not None]
    # the threshold the evaluate step used (an operating point chosen on the validation split), else the profile's
    threshold = float((evaluated or {}).get("threshold", evaluate["threshold"]))
    chosen = str(
        ((evaluated or {}).get("operating_point") or {}).get("chosen", f"fixed: evaluate.threshold {threshold:g}")
    )
    canvas = patches.get("canvas")
    segment = dict(profile.get("segment", {}))
    lesions_from = str(segment.get("method", "reference"))
    if lesions_from == "learned" and segment.get("resolved_model"):
        lesions_from = f"learned ({segment['resolved_model']})"
    evaluation = {**_evaluation(metrics, intervals, precision, profile, split), "threshold": threshold}
    card = {
        "schema_version": CARD_SCHEMA_VERSION,
        "model": {
            "name": model_name,
            "version": version,
            "task": "colorectal liver metastasis (label 1) vs benign cyst (label 0), one CT lesion at a time",
            "architecture": f"{backbone} + FC-{units}/Dropout-{dropout:g} x2 + softmax",
            "backbone": backbone,
            "backbone_key": backbone_key,
            "weights": weights,
            "initialisation": _initialisation(weights),
            "head": {
                "description": _head(units, dropout),
                "dense_units": units,
                "dropout": dropout,
                "dense_layers": 2,
                "classes": 2,
            },
            "bn_momentum": train.get("bn_momentum"),
            "n_parameters": int(n_parameters),
        },
        "input": {
            "shape": shape,
            "dtype": "float32",
            "per": "lesion",
            "channels": list(_CHANNELS),
            "patches": {
                "margin_mm": patches.get("margin_mm"),
                "canvas": canvas,
                "output_size": patches.get("output_size"),
                "square_pixels": patches.get("square_pixels"),
                "crop": "the lesion's bounding box in each plane plus the margin on each side",
                "padding": "centred on the canvas, padded with the bounding box's mean value; crops larger than "
                "the canvas shrunk to fit",
                "resize": (
                    "the canvas as it is"
                    if patches.get("output_size") is None
                    else f"the canvas resized to {patches.get('output_size')}"
                ),
                "pixels": (
                    "square (planes reformatted in true proportions)"
                    if patches.get("square_pixels")
                    else "the raw voxel grid"
                ),
            },
            "standardisation": "each channel standardised on its own: mean 0, standard deviation 1 "
            "(a constant patch becomes zeros)",
            "requires": "a CT in Hounsfield units and the lesion's segmentation on the same grid",
        },
        "output": {
            "format": "softmax [P(cyst), P(metastasis)]",
            "classes": [
                {"index": LABEL_CYST, "name": LABEL_NAMES[LABEL_CYST]},
                {"index": LABEL_METASTASIS, "name": LABEL_NAMES[LABEL_METASTASIS]},
            ],
            "threshold": threshold,
            "decision": f"metastasis when P(metastasis) >= {threshold:g}, else cyst",
            "threshold_chosen": chosen,
            "probability": _calibration(evaluated)["description"],
        },
        "data": {
            "version": data_version,
            "origin": cohort.get("origin", "unknown"),
            "lesions_from": lesions_from if lesions_from == "reference" else f"{lesions_from} segmentation",
            "cohort": cohort,
        },
        "split": {
            "unit": "patient (every lesion of a patient in one set), stratified by label",
            "seed": split_settings.get("seed"),
            "val_fraction": split_settings.get("val_fraction"),
            "test_fraction": split_settings.get("test_fraction"),
            "sizes": split,
        },
        "evaluation": evaluation,
        "calibration": _calibration(evaluated),
        "breakdown": list((evaluated or {}).get("breakdown", [])),
        "training": _training(train, profile),
        "lineage": {k: v for k, v in lineage.items() if k not in _LINEAGE_LEFT_OUT},
        "intended_use": {"summary": INTENDED_USE, "in_scope": list(_IN_SCOPE), "out_of_scope": list(_OUT_OF_SCOPE)},
        "limitations": _limitations(cohort, split, evaluation, lesions_from),
        "external_evaluations": [],
        "reference": REFERENCE,
    }
    return _plain(card)


# --- Markdown ---------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"
    if isinstance(value, list):
        return " x ".join(str(v) for v in value)
    return str(value)


def _fmt_g(value: Any) -> str:
    return "n/a" if value is None else f"{value:g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _limitation_line(item: str) -> str:
    """A bullet whose lead phrase (up to the first colon) is bold."""
    lead, sep, rest = item.partition(":")
    return f"- **{lead}**:{rest}" if sep and len(lead) <= 70 else f"- {item}"


def _calibration_section(calibration: dict | None) -> list[str]:
    if not calibration:
        return []
    words = {"brier": "Brier score", "ece": "expected calibration error"}
    rows = []
    for name, row in calibration["metrics"].items():
        metric, _, whose = name.partition("_")
        rows.append(
            [
                words[metric],
                "the network's own" if whose else "as answered",
                _fmt(row["estimate"]),
                f"{_fmt(row['lower'])} - {_fmt(row['upper'])}" if row["lower"] is not None else "n/a",
            ]
        )
    return [
        "## Calibration (TRIPOD+AI 23a)",
        "",
        f"What P(metastasis) means: {calibration['description']}; every answer (predict, predict-batch, the "
        f"served model) is {'the calibrated' if calibration['method'] != 'none' else 'that'} probability. "
        "Measured on the test lesions: the Brier score (0 perfect, "
        "0.25 always saying 0.5) and the expected calibration error (the mean gap, over bins of P, between the "
        "probability said and the fraction of metastases).",
        "",
        *(_table(["metric", "probability", "value", "95% interval"], rows) if rows else ["Not measured."]),
        "",
    ]


def _breakdown_section(rows: list[dict] | None) -> list[str]:
    if not rows:
        return []
    return [
        "## Where it fails (TRIPOD+AI 23a: subgroups)",
        "",
        "The test lesions by lesion diameter (of the ball of its volume) and by their CT's slice spacing: a model "
        "must be judged where cysts and metastases overlap in size, not only overall. n/a: undefined (no "
        "metastasis for sensitivity, no cyst for specificity). Per patient and the worst-scored lesions: "
        "`breakdown.csv` and `failures.png` among the training run's `evaluation/` artifacts.",
        "",
        *_table(
            ["by", "group", "lesions (metastases / cysts)", "accuracy", "sensitivity", "specificity"],
            [
                [
                    row["by"],
                    row["group"],
                    f"{row['lesions']} ({row['metastases']} / {row['cysts']})",
                    _fmt(row["accuracy"]),
                    _fmt(row["recall"]),
                    _fmt(row["specificity"]),
                ]
                for row in rows
            ],
        ),
        "",
    ]


def _interval_cell(row: dict) -> str:
    if row.get("estimate") is None:
        return "n/a"
    if row.get("lower") is None or row.get("upper") is None:
        return _fmt(row["estimate"])
    return f"{_fmt(row['estimate'])} [{_fmt(row['lower'])}, {_fmt(row['upper'])}]"


#: the columns of the external evaluations' table
_EXTERNAL_METRICS = ("accuracy", "recall", "specificity", "roc_auc", "brier", "ece")


def _external_section(evaluations: list[dict]) -> list[str]:
    lines = ["## External evaluations (TRIPOD+AI 23a, 20c, 16)", ""]
    if not evaluations:
        return lines + [
            "None yet. The figures above come from the training cohort's own test patients: how the model does on "
            "other scanners, centres and patients is unknown until a cohort it was not trained on scores it "
            "(`liverlesion evaluate --data COHORT --model NAME --version N`).",
            "",
        ]
    words = {"recall": "sensitivity", "roc_auc": "ROC AUC", "brier": "Brier", "ece": "ECE"}
    rows = []
    for e in evaluations:
        metrics = e.get("metrics", {})
        rows.append(
            [
                f"`{e.get('cohort')}`" + (" (the training cohort: not external)" if e.get("training_cohort") else ""),
                str(e.get("origin") or "not recorded"),
                f"{e.get('lesions', 'n/a')} ({e.get('patients') if e.get('patients') is not None else 'n/a'})",
                *[_interval_cell(metrics.get(name, {})) for name in _EXTERNAL_METRICS],
                str(e.get("at") or "n/a")[:10],
            ]
        )
    return [
        *lines,
        "Every cohort this version was scored on after its registration, with the version's own preprocessing, "
        "calibration and threshold, on the cohort's reference lesion masks; intervals: 95% patient bootstrap (one "
        "patient gives none). n/a: undefined on that cohort (no cyst: specificity; one class: ROC AUC). The "
        "evaluation's MLflow run holds its report (`evaluation/report.html`).",
        "",
        *_table(
            ["cohort", "origin", "lesions (patients)", *(words.get(m, m) for m in _EXTERNAL_METRICS), "date"],
            rows,
        ),
        "",
    ]


def _summary_section(card: dict) -> list[str]:
    ev, out, data = card["evaluation"], card["output"], card["data"]
    cohort = data.get("cohort", {})
    metrics = ev["metrics"]
    headline = ", ".join(
        f"{_METRIC_WORDS[name]} {_interval_cell(metrics[name])}" for name in ("accuracy", "roc_auc") if name in metrics
    )
    external = card.get("external_evaluations") or []
    # the limitations that follow from this version's data (the first two hold for every version)
    particular = card["limitations"][2:]
    return [
        "## Summary (TRIPOD+AI 2)",
        "",
        f"- Task: a segmented liver lesion in CT, colorectal metastasis or benign cyst; metastasis when "
        f"P(metastasis) >= {out['threshold']:g}.",
        f"- Data: {_ORIGIN_WORDS.get(data['origin'], data['origin'])}, {cohort.get('lesions', 'n/a')} lesions of "
        f"{cohort.get('patients', 'n/a')} patients.",
        f"- Test ({ev.get('lesions', 'n/a')} lesions of {ev.get('patients', 'n/a')} patients): {headline or 'n/a'}.",
        "- External evaluations: "
        + (
            "; ".join(
                f"`{e['cohort']}`"
                + (" (the training cohort: not external)" if e.get("training_cohort") else "")
                + f" {e.get('lesions', 'n/a')} lesions, accuracy "
                f"{_interval_cell(e.get('metrics', {}).get('accuracy', {}))}"
                for e in external
            )
            if external
            else "none yet"
        )
        + ".",
        *([f"- Mind: {_limitation_line(item)[2:]}" for item in particular]),
        "",
    ]


def render_markdown(card: dict) -> str:
    """The card as a Markdown document, its sections in the order of the TRIPOD+AI checklist (each names the
    items it answers); the same card always gives the same text."""
    model, inp, out = card["model"], card["input"], card["output"]
    data, split, ev, train = card["data"], card["split"], card["evaluation"], card["training"]
    cohort = data.get("cohort", {})
    by_class = cohort.get("lesions_by_class", {})
    volume = cohort.get("volume_ml") or {}
    version = f" v{model['version']}" if model.get("version") else ""
    lines = [
        f"# {model['name']}{version}",
        "",
        f"**{model['architecture']}**, {model['initialisation']}, after Perdigon Romero et al. (ISBI 2019): a "
        "diagnostic prediction model (deep learning) for liver lesions in CT. The sections follow the TRIPOD+AI "
        "checklist; each names the items it answers.",
        "",
        *_summary_section(card),
        "## Intended use (TRIPOD+AI 3a, 3b, 4)",
        "",
        f"> **{card['intended_use']['summary']}**",
        "",
        f"Given a CT and the segmentation of a liver lesion already found, the model gives the probability that "
        f"the lesion is a colorectal liver metastasis rather than a benign cyst. It looks at three orthogonal "
        f"patches through the lesion with an {model['backbone']} backbone.",
        "",
        "Use:",
        *[f"- {item}" for item in card["intended_use"]["in_scope"]],
        "",
        "Do not use for:",
        *[f"- {item}" for item in card["intended_use"]["out_of_scope"]],
        "",
        "## Data and split (TRIPOD+AI 5a, 6a, 6b, 10, 12a)",
        "",
        f"- Data version: `{data['version']}`",
        f"- Origin: {data['origin']}: {cohort.get('origin_details', {}).get('summary', 'n/a')}",
        f"- Cohort: {cohort.get('patients', 'n/a')} patients, {cohort.get('cases', 'n/a')} CT, "
        f"{cohort.get('lesions', 'n/a')} lesions ({by_class.get('cyst', 0)} cysts, {by_class.get('metastasis', 0)} "
        f"metastases, {by_class.get('untyped', 0)} untyped)",
        f"- Lesion volume: {_fmt_g(volume.get('min'))} to {_fmt_g(volume.get('max'))} mL "
        f"(median {_fmt_g(volume.get('median'))} mL)",
        "- Its training lesions came from "
        + (
            "the reference masks"
            if data.get("lesions_from", "reference") == "reference"
            else "a " + data["lesions_from"]
        ),
        f"- Split: by {split['unit']}; seed {split.get('seed')}, validation {_fmt(split.get('val_fraction'), 2)}, "
        f"test {_fmt(split.get('test_fraction'), 2)}",
        "",
    ]
    sizes = split.get("sizes", {})
    totals = {k: sum(s.get(k, 0) for s in sizes.values()) for k in ("patients", "lesions", "cysts", "metastases")}
    lines += _table(
        ["set", "patients", "lesions", "cysts", "metastases"],
        [
            [name, *(str(s.get(k, 0)) for k in ("patients", "lesions", "cysts", "metastases"))]
            for name, s in sizes.items()
        ]
        + [["total", *(str(v) for v in totals.values())]],
    )
    patches = inp["patches"]
    lines += [
        "",
        "## Outcome, input and data preparation (TRIPOD+AI 7, 8a, 9a)",
        "",
        "- Outcome: each lesion's type, metastasis or cyst, as the cohort's reference records it (the mask's class "
        "codes or its lesion_types.csv), one lesion at a time.",
        f"- Input per lesion: {inp['dtype']} {_fmt(inp['shape'])} (rows x cols x channels); needs {inp['requires']}",
        *[f"- {channel}" for channel in inp["channels"]],
        f"- Patches: {patches['crop']} (margin {_fmt_g(patches.get('margin_mm'))} mm); {patches['padding']}; "
        f"canvas {_fmt(patches.get('canvas'))}; {patches['resize']}; pixels {patches['pixels']}",
        f"- Standardisation: {inp['standardisation']}",
        "",
        "## Missing data, class balance and fairness (TRIPOD+AI 11, 13, 14)",
        "",
        f"- Missing data: a lesion without a type ({by_class.get('untyped', 0)} in this cohort) is left out of "
        "training and testing; a CT or mask that breaks the data contract stops the run or is quarantined, naming "
        "the case.",
        f"- Class balance: {by_class.get('cyst', 0)} cysts and {by_class.get('metastasis', 0)} metastases, trained "
        "on as they are (no resampling, no class weights); the split is stratified by class.",
        "- Fairness: no patient attribute (age, sex, ethnicity, scanner, centre) is recorded, so performance across "
        "such groups is not measured; by lesion size and slice spacing it is (Where it fails).",
        "",
        "## Model and training (TRIPOD+AI 12c, 22)",
        "",
        f"- Backbone: {model['backbone']} (`{model['backbone_key']}`), {model['initialisation']}",
        f"- Head: {model['head']['description']}",
        "- Batch-norm momentum: "
        + (_fmt_g(model["bn_momentum"]) if model.get("bn_momentum") is not None else "Keras default (0.99)"),
        f"- Parameters: {model['n_parameters']:,}",
        f"- Profile: `{train.get('profile')}`"
        + (f": {train['profile_description']}" if train.get("profile_description") else ""),
        f"- Optimiser: {train['optimiser']}, learning rate {_fmt_g(train.get('learning_rate'))}, "
        f"batch {train.get('batch_size')}, up to {train.get('epochs')} epochs; loss {train['loss']}",
        f"- Learning-rate schedule: {train['lr_schedule']}",
        f"- Early stopping: {train['early_stopping']}",
        f"- Augmentation: {train['augmentation']}",
        f"- Seed: {train.get('seed')}",
        "",
        "## Output, operating point and measures (TRIPOD+AI 12e, 12f, 15)",
        "",
        f"- Output: {out['format']}; {out['decision']}",
        f"- Threshold: {out.get('threshold_chosen', 'fixed')}",
        f"- P(metastasis): {out.get('probability', UNCALIBRATED)}",
        "- Measured: the seven metrics of the paper's Table 2 at that threshold, the Brier score and the expected "
        "calibration error, each with a patient-level bootstrap interval",
        "",
        "## Code and lineage (TRIPOD+AI 18e, 18f)",
        "",
        *[f"- {key}: `{value}`" for key, value in card["lineage"].items()],
        "",
        "## Test performance (TRIPOD+AI 23a)",
        "",
        f"{ev.get('lesions', 'n/a')} test lesions of {ev.get('patients', 'n/a')} patients, never seen in training; "
        f"threshold {ev['threshold']:g}; scored in {ev['precision']}; intervals: {ev['interval']}.",
        "",
        *_table(
            ["metric", "value", "95% interval"],
            [
                [
                    _METRIC_WORDS.get(name, name),
                    _fmt(row["estimate"]),
                    f"{_fmt(row['lower'])} - {_fmt(row['upper'])}" if row["lower"] is not None else "n/a",
                ]
                for name, row in ev["metrics"].items()
            ],
        ),
        "",
        *_calibration_section(card.get("calibration")),
        *_breakdown_section(card.get("breakdown")),
        *_external_section(card.get("external_evaluations") or []),
        "## Known limitations (TRIPOD+AI 26)",
        "",
        *[_limitation_line(item) for item in card["limitations"]],
        "",
        "## In care (TRIPOD+AI 27a, 27b)",
        "",
        "- Poor or missing input: a mask on another grid, an empty mask, impossible CT numbers or an unreadable "
        "file is refused with a message naming the case and the problem, never answered.",
        "- Users: a radiologist reads every answer beside its lesion map (the paper's Figure 5) and decides.",
        "",
        "## References",
        "",
        f"- {card['reference']}",
        f"- {TRIPOD_AI}",
        "",
        f"<sub>Model card schema {card['schema_version']}.</sub>",
        "",
    ]
    return "\n".join(lines)
