"""``liverlesion evaluate --data COHORT``: a cohort's automatic segmentation measured, through the console
command, in a throw-away project with a real MLflow store; the cohort is the real CT of ``real_ct.py`` (LiTS
case 117) written as a cohort folder with its liver mask."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from integration_support import cli, make_project, mlflow_client
from real_ct import lits117

from liverlesion.imaging import affine_from_spacing, save_nifti

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    case = lits117()
    cohort = tmp_path_factory.mktemp("cohort")
    affine = affine_from_spacing(case.spacing)
    for sub in ("images", "masks", "livers"):
        (cohort / sub).mkdir()
    save_nifti(np.round(case.image).astype(np.int16), affine, cohort / "images" / "c1.nii.gz")
    save_nifti(case.tumours.astype(np.uint8), affine, cohort / "masks" / "c1.nii.gz")
    save_nifti(case.liver.astype(np.uint8), affine, cohort / "livers" / "c1.nii.gz")
    pd.DataFrame(
        [
            {
                "patient_key": "P1",
                "case_id": "c1",
                "image": "images/c1.nii.gz",
                "mask": "masks/c1.nii.gz",
                "mask_encoding": "binary",
                "liver_mask": "livers/c1.nii.gz",
            }
        ]
    ).to_csv(cohort / "cases.csv", index=False)
    root, env = make_project(tmp_path_factory.mktemp("project"))
    out = root / "evaluation"
    done = cli(root, env, "evaluate", "--data", str(cohort), "--segment", "classical", "--out", str(out), "--json")
    return root, env, cohort, out, json.loads(done.stdout)


def test_evaluate_writes_the_tables_and_the_report(evaluated):
    _, _, _, out, record = evaluated
    assert {p.name for p in out.iterdir()} == {
        "segmentation.md",
        "segmentation_cases.csv",
        "segmentation_lesions.csv",
        "summary.json",
    }
    cases = pd.read_csv(out / "segmentation_cases.csv")
    lesions = pd.read_csv(out / "segmentation_lesions.csv")
    assert list(cases["case_id"]) == ["c1"] and cases["liver_dice"].iloc[0] > 0.85
    reference = lesions[lesions["kind"] == "reference"]
    assert len(reference) == 70 and set(reference["size"]) == {"<10 mm", "10-20 mm", ">=20 mm"}
    summary = record["summary"]
    by_size = {s["size"]: s for s in summary["by_size"]}
    assert sum(s["reference"] for s in by_size.values()) == 70
    assert sum(s["found"] for s in by_size.values()) == summary["found_lesions"] == int(cases["found_lesions"].sum())
    assert summary["outside_liver_lesions"] == 0
    assert "| reference lesion size |" in (out / "segmentation.md").read_text()
    written = json.loads((out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert written["summary"]["found_lesions"] == summary["found_lesions"]


def test_evaluate_logs_an_evaluation_run_with_the_cohorts_hash(evaluated):
    root, _, _, _, record = evaluated
    client = mlflow_client(root)
    run = client.get_run(record["mlflow_run_id"])
    assert run.data.tags["job"] == "evaluation" and run.data.tags["segment_method"] == "classical"
    assert run.data.tags["data_version"] == record["data"]["version"]
    assert run.data.metrics["liver_dice_median"] == pytest.approx(record["summary"]["liver_dice_median"])
    assert "detection_recall_from_20mm" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/segmentation_cases.csv" in artifacts


def test_evaluate_refuses_the_reference_masks_in_one_line(evaluated):
    root, env, cohort, _, _ = evaluated
    done = cli(root, env, "evaluate", "--data", str(cohort), "--segment", "reference", check=False)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "classical or learned" in done.stderr
