"""The model card: built from what was trained (backbone, head, data, split, metrics), JSON-able, deterministic."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pandas as pd
import pytest

import liverlesion.modelcard as modelcard
from liverlesion.config import load_profile
from liverlesion.deid import deidentification_record
from liverlesion.modelcard import (
    CARD_SCHEMA_VERSION,
    build_model_card,
    cohort_summary,
    render_markdown,
    split_sizes,
)
from liverlesion.phantom import cohort_metadata
from tests.profiles import QUICK, with_changes

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

METRICS = {
    "accuracy": 0.9130434782608695,
    "balanced_accuracy": 0.9090909090909092,
    "f1": 0.9047619047619048,
    "roc_auc": 0.9621212121212122,
    "precision": 0.95,
    "recall": 0.8636363636363636,
    "specificity": 0.9545454545454546,
}
INTERVALS = {
    "accuracy": [0.8421052631578947, 0.975],
    "balanced_accuracy": [0.83, 0.97],
    "f1": [0.8, 0.97],
    "roc_auc": [0.9, 1.0],
    "precision": [0.85, 1.0],
    "recall": [0.7, 0.96],
    "specificity": [0.85, 1.0],
}
LINEAGE = {
    "data_version": "dvc:abc123",
    "split_manifest_hash": "f" * 64,
    "git_commit": "0123abcd",
    "profile": "quick",
    "config_hash": "1234567890abcdef",
    "config": json.dumps({"train": {"epochs": 12}}),
    "mlflow_run_id": "run-1",
}


def profile(overrides: dict | None = None) -> dict:
    return load_profile("quick", CONFIGS, overrides).model_dump(mode="json")


def cases_table() -> pd.DataFrame:
    rows = [("P1", "P1-C1"), ("P1", "P1-C2"), ("P2", "P2-C1"), ("P3", "P3-C1"), ("P4", "P4-C1"), ("P5", "P5-C1")]
    return pd.DataFrame(rows, columns=["patient_key", "case_id"]).assign(data_version="dvc:abc123")


def lesions_table() -> pd.DataFrame:
    rows = [  # lesion_id, case_id, patient_key, label, volume_ml
        ("P1-C1-L01", "P1-C1", "P1", 1, 2.5),
        ("P1-C2-L01", "P1-C2", "P1", 1, 10.0),
        ("P2-C1-L01", "P2-C1", "P2", 0, 0.4),
        ("P2-C1-L02", "P2-C1", "P2", None, 1.0),
        ("P3-C1-L01", "P3-C1", "P3", 0, 30.0),
        ("P4-C1-L01", "P4-C1", "P4", 1, 5.0),
        ("P5-C1-L01", "P5-C1", "P5", 0, 3.0),
    ]
    table = pd.DataFrame(rows, columns=["lesion_id", "case_id", "patient_key", "label", "volume_ml"])
    table["label"] = table["label"].astype("Int64")
    return table


def manifest_table(test_lesions: int = 4) -> pd.DataFrame:
    rows = [
        ("L1", "A", 1, "train"),
        ("L2", "A", 0, "train"),
        ("L3", "B", 1, "train"),
        ("L4", "C", 0, "train"),
        ("L5", "D", 1, "val"),
        ("L6", "D", 0, "val"),
    ]
    rows += [(f"T{i}", f"T{i // 2}", i % 2, "test") for i in range(test_lesions)]
    return pd.DataFrame(rows, columns=["lesion_id", "patient_key", "label", "set"])


def synthetic_meta() -> dict:
    return cohort_metadata(with_changes(QUICK.cohort, seed=7, n_patients=5, n_lesions=7))


def imported_meta(layouts: tuple[str, ...] = ("crlm",)) -> dict:
    """What ``liverlesion.importers.import_cohort`` writes to ``cohort.json``."""
    imports = [
        {
            "importer_version": "1.0.0",
            "layout": layout,
            "settings": {"skip_bad": False},
            "cases": 3,
            "lesions": 4,
            "refused": 0,
        }
        for layout in layouts
    ]
    return {
        "source": "liverlesion import",
        "imports": imports,
        "deidentification": deidentification_record(),
        "mask_codes": "instance masks",
        "units": {"image": "HU (int16)", "spacing": "mm"},
    }


def card_for(
    prof: dict | None = None,
    meta: dict | None = None,
    manifest: pd.DataFrame | None = None,
    metrics: dict | None = None,
    intervals: dict | None = None,
    version: str | None = "3",
    evaluated: dict | None = None,
) -> dict:
    return build_model_card(
        profile=prof or profile(),
        metrics=metrics or METRICS,
        intervals=intervals or INTERVALS,
        input_shape=(96, 80, 3),
        n_parameters=23_000_000,
        precision="bfloat16",
        data_version="dvc:abc123",
        cohort=cohort_summary(cases_table(), lesions_table(), synthetic_meta() if meta is None else meta),
        split=split_sizes(manifest_table() if manifest is None else manifest),
        lineage=LINEAGE,
        model_name="liver-lesion-classifier",
        version=version,
        evaluated=evaluated,
    )


@pytest.fixture(scope="module")
def quick() -> dict:
    return profile()


@pytest.fixture(scope="module")
def resnet() -> dict:
    return profile({"train": {"backbone": "inception_resnet_v2", "weights": "imagenet"}})


def test_backbone_named_is_the_one_trained(quick, resnet):
    v3, irv2 = card_for(quick), card_for(resnet)
    assert v3["model"]["backbone"] == "InceptionV3"
    assert "InceptionV3" in render_markdown(v3)
    assert irv2["model"]["backbone"] == "InceptionResNetV2"
    text = render_markdown(irv2)
    assert "InceptionResNetV2" in text
    assert "InceptionV3" not in text and "InceptionV3" not in json.dumps(irv2)


def test_initialisation_follows_weights(quick, resnet):
    assert "NPW" in card_for(quick)["model"]["initialisation"]
    assert "IPW" in card_for(resnet)["model"]["initialisation"]
    assert "IPW" in render_markdown(card_for(resnet))


def test_head_follows_settings():
    card = card_for(profile({"train": {"dense_units": 256, "dropout": 0.25}}))
    head = card["model"]["head"]
    assert (head["dense_units"], head["dropout"]) == (256, 0.25)
    text = render_markdown(card)
    assert "FC-256" in text and "Dropout 0.25" in text
    assert "FC-512" not in text and "0.4" not in head["description"]


def test_metrics_and_intervals_in_markdown(quick):
    card = card_for(quick)
    assert card["evaluation"]["metrics"]["roc_auc"] == {
        "estimate": METRICS["roc_auc"],
        "lower": 0.9,
        "upper": 1.0,
        "width": pytest.approx(0.1),
    }
    text = render_markdown(card)
    assert "| ROC AUC | 0.962 | 0.900 - 1.000 |" in text
    assert "| accuracy | 0.913 | 0.842 - 0.975 |" in text
    assert "bfloat16" in text and "bootstrap over patients" in text


def test_split_sizes_by_class():
    sizes = split_sizes(manifest_table(test_lesions=5))
    assert sizes == {
        "train": {"patients": 3, "lesions": 4, "cysts": 2, "metastases": 2},
        "val": {"patients": 1, "lesions": 2, "cysts": 1, "metastases": 1},
        "test": {"patients": 3, "lesions": 5, "cysts": 3, "metastases": 2},
    }
    text = render_markdown(card_for(manifest=manifest_table(test_lesions=5)))
    assert "| train | 3 | 4 | 2 | 2 |" in text
    assert "| test | 3 | 5 | 3 | 2 |" in text
    assert "| total | 7 | 11 | 6 | 5 |" in text


def test_cohort_summary_counts_classes_volumes_and_origin():
    summary = cohort_summary(cases_table(), lesions_table(), synthetic_meta())
    assert (summary["patients"], summary["cases"], summary["lesions"]) == (5, 6, 7)
    assert summary["lesions_by_class"] == {"cyst": 3, "metastasis": 3, "untyped": 1}
    assert summary["volume_ml"] == {"min": 0.4, "median": 3.0, "max": 30.0}
    assert summary["origin"] == "synthetic"
    assert summary["origin_details"]["spec"]["seed"] == 7
    imported = cohort_summary(cases_table(), lesions_table(), imported_meta())
    assert imported["origin"] == "imported"
    assert imported["origin_details"]["layouts"] == ["crlm"] and imported["origin_details"]["deidentified"]
    assert cohort_summary(cases_table(), lesions_table(), None)["origin"] == "unknown"
    assert cohort_summary(cases_table(), lesions_table(), {})["origin"] == "unknown"


def test_synthetic_limitation_only_for_synthetic_data(quick):
    synthetic = card_for(quick, meta=synthetic_meta())
    imported = card_for(quick, meta=imported_meta())
    assert any("synthetic phantom CT, not on patients" in item for item in synthetic["limitations"])
    assert "synthetic phantom CT, not on patients" in render_markdown(synthetic)
    assert not any("synthetic" in item for item in imported["limitations"])
    assert "not on patients" not in render_markdown(imported)


def test_single_source_limitation_for_one_imported_layout(quick):
    one = card_for(quick, meta=imported_meta(("crlm",)))
    two = card_for(quick, meta=imported_meta(("crlm", "lits")))
    assert any(item.startswith("Single-source data") and "crlm" in item for item in one["limitations"])
    assert not any(item.startswith("Single-source data") for item in two["limitations"])
    assert any("not recorded" in item for item in card_for(quick, meta={})["limitations"])


def test_small_test_set_limitation(quick):
    big = manifest_table(test_lesions=60)
    narrow = {name: [value - 0.05, min(1.0, value + 0.05)] for name, value in METRICS.items()}
    assert not any(
        i.startswith("Small test set") for i in card_for(quick, manifest=big, intervals=narrow)["limitations"]
    )
    few = card_for(quick, manifest=manifest_table(test_lesions=4), intervals=narrow)
    assert any(i.startswith("Small test set") and "4 test lesions" in i for i in few["limitations"])
    wide = {**narrow, "recall": [0.6, 0.95]}
    flagged = card_for(quick, manifest=big, intervals=wide)["limitations"]
    assert any(i.startswith("Small test set") and "recall 0.60-0.95" in i for i in flagged)


def test_always_present_limitations_intended_use_and_reference(quick):
    card = card_for(quick)
    assert any(item.startswith("Two classes only") and "hemangioma" in item for item in card["limitations"])
    assert any(item.startswith("Depends on the lesion mask") for item in card["limitations"])
    text = render_markdown(card)
    assert "## Intended use" in text and "## Known limitations" in text
    # the limitations that follow from this version's data are in the summary too, at the top
    summary = text.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert "synthetic phantom CT, not on patients" in summary and "Two classes only" not in summary
    assert "not a substitute for a radiologist" in text and "not a diagnosis" in text
    assert "Perdigon Romero" in card["reference"] and "ISBI" in card["reference"]


def test_sections_follow_the_profile(quick):
    card = card_for(quick)
    assert card["schema_version"] == CARD_SCHEMA_VERSION == 1
    assert card["model"]["name"] == "liver-lesion-classifier" and card["model"]["version"] == "3"
    assert card["input"]["shape"] == [96, 80, 3]
    assert card["input"]["patches"]["canvas"] == quick["patches"]["canvas"]
    assert card["input"]["patches"]["margin_mm"] == quick["patches"]["margin_mm"]
    assert card["output"]["threshold"] == quick["evaluate"]["threshold"]
    assert card["split"]["seed"] == quick["split"]["seed"]
    assert card["training"]["settings"] == quick["train"]
    assert card["training"]["optimiser"] == "Adam" and card["training"]["epochs"] == quick["train"]["epochs"]
    assert "config" not in card["lineage"] and card["lineage"]["git_commit"] == "0123abcd"
    text = render_markdown(card)
    assert text.startswith("# liver-lesion-classifier v3\n")
    assert "0123abcd" in text and "1234567890abcdef" in text
    assert card["training"]["lr_schedule"] == f"cosine decay from 0.001 to 0 over the {quick['train']['epochs']} epochs"
    assert card["training"]["early_stopping"].endswith(
        "the epoch with the lowest validation loss kept (of equal ones the last)"
    )
    paper_like = card_for(
        profile(
            {
                "train": {
                    "augment": True,
                    "lr_patience": 10,
                    "early_stopping_patience": 50,
                    "lr_schedule": "constant",
                    "monitor": "val_accuracy",
                    "tie_break": "first",
                }
            }
        )
    )
    assert "rotation up to 30 deg" in paper_like["training"]["augmentation"]
    assert "x0.5 after 10 epochs without a validation-accuracy gain" in paper_like["training"]["lr_schedule"]
    assert paper_like["training"]["early_stopping"].startswith("after 50 epochs without a validation-accuracy gain")
    assert paper_like["training"]["early_stopping"].endswith("best validation accuracy kept (of equal ones the first)")


def test_json_round_trip_is_unchanged(quick, resnet):
    for card in (card_for(quick), card_for(resnet, meta=imported_meta()), card_for(quick, meta={}, version=None)):
        assert json.loads(json.dumps(card)) == card
    undefined = card_for(
        quick,
        metrics={**METRICS, "roc_auc": float("nan")},
        intervals={**INTERVALS, "roc_auc": [float("nan"), float("nan")]},
    )
    assert undefined["evaluation"]["metrics"]["roc_auc"]["estimate"] is None
    assert json.loads(json.dumps(undefined, allow_nan=False)) == undefined
    assert "| ROC AUC | n/a | n/a |" in render_markdown(undefined)


def test_rendering_is_deterministic(quick):
    card = card_for(quick)
    assert render_markdown(card) == render_markdown(card)
    assert render_markdown(card) == render_markdown(json.loads(json.dumps(card)))
    assert card_for(quick) == card


def test_domain_module_imports_no_tracking_or_orchestration():
    tree = ast.parse(Path(modelcard.__file__).read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not imported & {"mlflow", "zenml", "dvc", "keras", "tensorflow", "sklearn"}


def test_the_card_says_where_the_training_lesions_came_from():
    learned = profile({"segment": {"method": "learned"}})
    learned["segment"]["resolved_model"] = "models:/seg/2"  # as the CLI records the resolved cascade
    card = card_for(learned)
    assert card["data"]["lesions_from"] == "learned (models:/seg/2) segmentation"
    assert any("learned (models:/seg/2) segmentation found" in item for item in card["limitations"])
    assert "came from a learned (models:/seg/2) segmentation" in render_markdown(card)
    reference = card_for()
    assert reference["data"]["lesions_from"] == "reference"
    assert "came from the reference masks" in render_markdown(reference)
    assert not any("segmentation found" in item for item in reference["limitations"])


def _evaluated() -> dict:
    """The evaluate step's summary: calibration and breakdown."""
    evaluated = {
        "calibration": {"method": "temperature", "temperature": 1.8, "slope": 1.0, "intercept": 0.0, "fitted_on": 41},
        "calibration_metrics": {"brier_network": 0.11, "ece_network": 0.09, "brier": 0.08, "ece": 0.04},
        "calibration_intervals": {
            "brier_network": [0.05, 0.2],
            "ece_network": [0.04, 0.2],
            "brier": [0.04, 0.14],
            "ece": [0.02, 0.12],
        },
    }
    evaluated["breakdown"] = [
        {
            "by": "lesion diameter",
            "group": "<10 mm",
            "lesions": 9,
            "metastases": 1,
            "cysts": 8,
            "accuracy": 0.667,
            "recall": 0.0,
            "specificity": 0.75,
        },
        {
            "by": "slice spacing",
            "group": ">=5 mm",
            "lesions": 4,
            "metastases": 0,
            "cysts": 4,
            "accuracy": 1.0,
            "recall": None,
            "specificity": 1.0,
        },
    ]
    return evaluated


def test_the_card_says_what_a_probability_means_before_and_after_calibration():
    evaluated = _evaluated()
    card = card_for(evaluated=evaluated)
    where = render_markdown(card).split("## Where it fails", 1)[1].split("\n## ", 1)[0]
    assert "| lesion diameter | <10 mm | 9 (1 / 8) | 0.667 | 0.000 | 0.750 |" in where
    assert "| slice spacing | >=5 mm | 4 (0 / 4) | 1.000 | n/a | 1.000 |" in where
    assert card["breakdown"][0]["group"] == "<10 mm" and "## Where it fails" not in render_markdown(card_for())
    assert card["calibration"]["method"] == "temperature" and card["calibration"]["fitted_on_set"] == "validation"
    assert card["calibration"]["metrics"]["ece"] == {"estimate": 0.04, "lower": 0.02, "upper": 0.12}
    assert "T = 1.800" in card["output"]["probability"] and "41 validation lesions" in card["output"]["probability"]
    text = render_markdown(card)
    section = text.split("## Calibration", 1)[1].split("\n## ", 1)[0]
    assert "| expected calibration error | the network's own | 0.090 | 0.040 - 0.200 |" in section
    assert "| expected calibration error | as answered | 0.040 | 0.020 - 0.120 |" in section
    # a version registered without calibration says so, and has no section to misread
    plain = card_for()
    assert plain["calibration"]["method"] == "none" and "as it is" in plain["output"]["probability"]
    assert "Not measured." in render_markdown(plain)


def _item(cited: str) -> tuple[int, str]:
    number = cited.strip().split(":")[0]
    return int(number.rstrip("abcdefg")), number.lstrip("0123456789")


def test_sections_follow_the_tripod_ai_checklist_and_cite_its_items(quick):
    """Each section names the TRIPOD+AI items it answers, and the sections come in the checklist's order."""
    import re

    text = render_markdown(card_for(quick, evaluated=_evaluated()))
    headings = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
    cited = [re.search(r"\(TRIPOD\+AI ([^)]+)\)", h) for h in headings]
    assert [h for h, c in zip(headings, cited) if c is None] == ["References"]
    first = [_item(c.group(1).split(",")[0]) for c in cited if c]
    assert first == sorted(first), headings
    items = {item.strip().split(":")[0] for c in cited if c for item in c.group(1).split(",")}
    # the items the issue names: calibration and measures (12e), updating (12f), thresholds (15), performance
    # with intervals and subgroups (23a), evaluation data unlike the training data (16, 20c), limitations (26)
    assert {"12e", "12f", "15", "23a", "16", "20c", "26"} <= items
    assert "BMJ 2024;385:e078378" in text


def test_every_external_evaluation_is_on_the_card_and_none_is_said_when_none(quick):
    from liverlesion.modelcard import external_evaluations_from_tags, with_external_evaluations

    card = card_for(quick)
    none = render_markdown(card).split("## External evaluations", 1)[1].split("\n## ", 1)[0]
    assert "None yet" in none and "training cohort's own test patients" in none
    tags = {
        "external.0123456789ab.accuracy": "0.8750",
        "external.0123456789ab.specificity": "nan",
        "external.0123456789ab.lesions": "8",
        "external.0123456789ab.patients": "1",
        "external.0123456789ab.run": "run1",
        "external.0123456789ab.at": "2026-12-06T08:00:00Z",
        "external.abc123.accuracy": "0.9",
        "external.abc123.at": "2026-12-05T08:00:00Z",
        "metric.accuracy": "0.9130",
    }
    found = external_evaluations_from_tags(tags)
    assert [e["cohort"] for e in found] == ["abc123", "0123456789ab"]  # oldest first
    assert found[1]["lesions"] == 8 and found[1]["run"] == "run1" and found[1]["metrics"]["accuracy"] == 0.875
    evaluated = [
        {**found[1], "origin": "imported with liverlesion import from layout(s) ircadb", "metrics": {
            "accuracy": {"estimate": 0.875, "lower": 0.8, "upper": 0.95}, "specificity": float("nan")}},
        {**found[0], "cohort": "dvc:abc123"},
    ]  # fmt: skip
    card = with_external_evaluations(card, evaluated, version="3")
    assert card["external_evaluations"][1]["training_cohort"] and not card["external_evaluations"][0]["training_cohort"]
    section = render_markdown(card).split("## External evaluations", 1)[1].split("\n## ", 1)[0]
    assert (
        "| `0123456789ab` | imported with liverlesion import from layout(s) ircadb | 8 (1) | 0.875 [0.800, 0.950] |"
        in (section)
    )
    assert "n/a" in section and "(the training cohort: not external)" in section
    summary = render_markdown(card).split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert "`0123456789ab` 8 lesions, accuracy 0.875 [0.800, 0.950]" in summary
    assert "`dvc:abc123` (the training cohort: not external)" in summary
    assert json.loads(json.dumps(card)) == card  # still JSON-able
