"""Automatic segmentation through the real pipeline: a run from classical masks, the cascade's own training
pipeline and registry alias, the learned cascade in ingest, and `predict` on a CT that has no mask.

One throw-away project (real DVC, ZenML, MLflow) on the tiny phantom cohort, which has liver masks.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from integration_support import TINY_PROFILE, cli, make_project, mlflow_client

from liverlesion.imaging import load_nifti

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = TINY_PROFILE["register"]["model_name"]
SEGMENTER = "liverlesion-segmenter"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("segmentation-project"))


def test_classical_masks_end_to_end(project):
    root, env = project
    done = cli(root, env, "run", "--profile", "tiny", "--set", "segment.method=classical")
    assert "classical segmentation, test patients: liver Dice" in done.stdout
    client = mlflow_client(root)
    experiment = client.get_experiment_by_name("liver-lesion-classification")
    [run] = client.search_runs([experiment.experiment_id], "params.segment_method = 'classical'")
    metrics = run.data.metrics
    assert metrics["seg_test_liver_dice"] > 0.9 and metrics["seg_all_liver_dice"] > 0.9
    assert metrics["seg_all_detection_recall"] > 0.3  # small lesions of the half-size phantoms are hard
    # every reference lesion of the test patients is accounted for: found (right or wrong) or missed
    for label in ("metastasis", "cyst"):
        parts = sum(
            metrics[f"end_to_end_{what}_{label}"] for what in ("found_called_right", "found_called_wrong", "missed")
        )
        assert parts == metrics[f"end_to_end_reference_{label}"] > 0
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id, "segmentation")}
    assert {"segmentation/segmentation.md", "segmentation/segmentation_lesions.csv"} <= artifacts
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert json.loads(version.tags["config"])["segment"]["method"] == "classical"


def test_learned_cascade_is_trained_registered_and_used_through_its_alias(project):
    root, env = project
    refused = cli(root, env, "export", "--profile", "tiny", "--set", "segment.method=learned", check=False)
    assert refused.returncode == 2 and "train-segmenter" in refused.stderr and "Traceback" not in refused.stderr

    done = cli(root, env, "train-segmenter", "--profile", "tiny", "--set", "segmenter.epochs=12", "--json")
    registration = json.loads(done.stdout[done.stdout.index("{") :])
    assert (registration["version"], registration["champion"], registration["decision"]) == ("1", "1", "promoted")
    assert registration["test"]["liver_dice"] > 0.9  # patients the cascade never saw
    client = mlflow_client(root)
    version = client.get_model_version_by_alias(SEGMENTER, "champion")
    run = client.get_run(version.run_id)
    assert (
        run.data.tags["job"] == "train_segmenter"
        and len(client.get_metric_history(run.info.run_id, "liver_loss")) == 12
    )
    assert {f.path for f in client.list_artifacts(version.run_id, "cascade")} >= {
        "cascade/liver_net.keras",
        "cascade/lesion_net.keras",
    }

    # the data steps with the learned cascade: the alias is resolved before the run, the cascade segments in ingest.
    # At test_fraction 0.2 the tiny cohort's test set is one patient, and a cascade trained for 12 epochs on a few
    # half-size phantoms may miss all three of its small cysts (SplitError, as it should be); 0.3 tests on three.
    done = cli(
        root,
        env,
        "export",
        "--profile",
        "tiny",
        "--set",
        "segment.method=learned",
        "--set",
        "split.test_fraction=0.3",
        str(root / "learned.npz"),
    )
    assert "wrote" in done.stdout
    with np.load(root / "learned.npz", allow_pickle=False) as exported:
        assert len(exported["train_x"]) > 0 and len(exported["test_x"]) > 0


@pytest.mark.parametrize("method", ["classical", "learned"])
def test_predict_a_ct_without_a_mask(project, method):
    root, env = project
    out = root / f"answer-{method}"
    cli(root, env, "predict", "data/images/case_001.nii.gz", "--model", MODEL, "--segment", method, "--out", str(out))
    for name in ("lesions.csv", "lesions.json", "lesion_classes.nii.gz", "lesion_map.png", "liver.nii.gz"):
        assert (out / name).exists(), name
    answer = json.loads((out / "lesions.json").read_text())
    assert answer["lesions_from"].startswith(f"{method} segmentation")
    ct, _ = load_nifti(root / "data/images/case_001.nii.gz")
    liver, _ = load_nifti(out / "liver.nii.gz")
    labels, _ = load_nifti(out / "lesion_classes.nii.gz")
    assert liver.shape == labels.shape == ct.shape and liver.any()
    assert len(answer["lesions"]) >= 1 and set(np.unique(labels)) <= {0, 1, 2} and labels.any()
    assert not (labels.astype(bool) & ~liver.astype(bool)).any()  # every lesion lies in the liver found
