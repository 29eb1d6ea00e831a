"""The real pipeline, end to end, on a tiny generated cohort, in an isolated ZenML/MLflow/DVC state.

Runs the console command as a user would (``liverlesion run``) in a throw-away project folder:
real DVC (git repo + local remote), real ZenML local store, real MLflow SQLite store.

Every test passes in any order: ``first_run`` registers version 1 of the tiny model once; the tests
that train again compare against what they find before they run, register under another model name,
or name version 1 explicitly.
"""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from integration_support import REPO, TINY_PROFILE, cli, mlflow_client

from liverlesion.precision import resolve_precision
from tests.browser import images_of
from tests.support import FAST_XLA_COMPILE

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def project(tiny_project):
    return tiny_project  # the session's (conftest.py): the containers test reads its first run back


@pytest.fixture(scope="module")
def first_run(tiny_first_run):
    return tiny_first_run


def test_first_run_registers_a_champion_with_lineage_and_metrics(project, first_run, tmp_path):
    root, _ = project
    out = first_run.stdout
    assert "regenerated the embedded default cohort" in out
    assert "registered tiny-liver-lesion version 1: promoted -> alias champion" in out
    assert "mlflow ui --backend-store-uri sqlite:///" in out

    data_hash = yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]
    client = mlflow_client(root)
    version = client.get_model_version_by_alias("tiny-liver-lesion", "champion")
    assert str(version.version) == "1"
    tags = version.tags
    assert tags["data_version"] == data_hash
    for key in ("split_manifest_hash", "git_commit", "fingerprint", "code_version", "zenml_run_id", "profile"):
        assert tags[key], key
    assert len(tags["split_manifest_hash"]) == 64
    assert json.loads(tags["config"])["cohort"]["n_patients"] == 12
    assert tags["git_commit"] != "unknown" and tags["profile"] == "tiny"
    assert tags["git_dirty"] == str(tags["git_commit"].endswith("-dirty")).lower()
    run = client.get_run(version.run_id)
    # lineage recorded when the model was trained: the commit, the fingerprint, the split itself
    assert run.data.tags["git_commit"] == tags["git_commit"] and run.data.tags["fingerprint"] == tags["fingerprint"]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "lineage")} == {"lineage/split_manifest.csv"}
    # the first version passed the gate, and the decision is recorded on it and as a run
    assert tags["decision"] == "promoted" and tags["compared_with"] == "none" and tags["decision_job"] == "gate"
    assert "the test split" in tags["gate_scored_on"] and "gate.candidate.roc_auc" in tags
    experiment = client.get_experiment_by_name("liver-lesion-classification")
    gate_runs = client.search_runs([experiment.experiment_id], "tags.job = 'gate' and tags.model_version = '1'")
    assert len(gate_runs) == 1 and gate_runs[0].data.tags["decision"] == "promoted"
    # the model card names what was trained, in the version's description and beside the model
    assert "InceptionV3" in version.description and "Intended use" in version.description
    card = json.loads(open(client.download_artifacts(run.info.run_id, "model_card/model_card.json")).read())
    assert card["data"]["version"] == data_hash and card["model"]["backbone"] == "InceptionV3"
    metrics = run.data.metrics
    for name in ("accuracy", "balanced_accuracy", "f1", "roc_auc", "precision", "recall", "specificity"):
        assert 0.0 <= metrics[f"test_{name}"] <= 1.0, name
        assert f"metric.{name}" in tags
    epochs = TINY_PROFILE["train"]["epochs"]
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == epochs  # one value an epoch
    assert run.data.params["dropout"] == "0.4" and run.data.params["dense_units"] == "512"
    # scored by the fast path exactly where this CPU has bfloat16 units, and the run says which
    assert run.data.params["inference_precision_setting"] == "auto"
    assert run.data.params["inference_precision"] == resolve_precision("auto")[0]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {
        "evaluation/confusion_matrix.png",
        "evaluation/roc_curve.png",
        "evaluation/test_predictions.csv",
        "evaluation/table2.md",
        "evaluation/table2.csv",
    } <= artifacts
    assert metrics["test_accuracy_lower"] <= metrics["test_accuracy"] <= metrics["test_accuracy_upper"]
    assert "95% patient-bootstrap intervals" in out
    # what a probability means: calibration fitted on the validation split, on the version and in the run
    calibration = json.loads(tags["calibration"])
    assert calibration["method"] == "temperature" and calibration["fitted_on"] > 0
    assert calibration["temperature"] != 1.0 and run.data.params["calibration_method"] == "temperature"
    for name in ("brier", "ece", "brier_network", "ece_network"):
        assert metrics[f"test_{name}_lower"] - 1e-9 <= metrics[f"test_{name}"] <= metrics[f"test_{name}_upper"] + 1e-9
    assert {
        "evaluation/reliability.png",
        "evaluation/calibration.csv",
        "evaluation/reliability.csv",
        "evaluation/validation_predictions.csv",
    } <= artifacts
    # where it fails: by size, slice spacing and patient, the worst-scored lesions, and the card's section
    assert {"evaluation/breakdown.csv", "evaluation/failures.png"} <= artifacts
    # one page a person reads, logged so that MLflow's UI shows it: every image loads in a real browser
    assert {"evaluation/report.html", "evaluation/lesion_map.png"} <= artifacts
    page = Path(client.download_artifacts(run.info.run_id, "evaluation/report.html", str(tmp_path)))
    images, _ = images_of(page, tmp_path)
    assert len(images) == 5 and all(image["complete"] and image["width"] > 0 for image in images), images
    groups = {(row["by"], row["group"]) for row in card["breakdown"]}
    assert {by for by, _ in groups} == {"lesion diameter", "slice spacing"}
    # the operating point chosen on the validation split: the test metrics, the version and its card use it
    threshold = metrics["decision_threshold"]
    assert threshold != 0.5 and tags["decision_threshold"] == f"{threshold:.6g}"
    assert (
        card["output"]["threshold"] == pytest.approx(threshold)
        and "recall >= 0.9" in card["output"]["threshold_chosen"]
    )
    assert card["calibration"]["method"] == "temperature" and set(card["calibration"]["metrics"]) == {
        "brier",
        "ece",
        "brier_network",
        "ece_network",
    }


def run_name(done) -> str:
    """The ZenML run a `liverlesion run` printed it made."""
    return done.stdout.split("pipeline run ", 1)[1].split(":", 1)[0]


def test_the_split_is_patient_disjoint_and_recorded(project, first_run):
    root, env = project
    script = (
        f"from zenml.utils import source_utils; source_utils.set_custom_source_root({str(REPO)!r})\n"
        "from zenml.client import Client\n"
        f"run = Client().get_pipeline_run({run_name(first_run)!r})\n"
        "m = run.steps['split'].outputs['split_manifest'][0].load()\n"
        "h = run.steps['split'].outputs['split_manifest_hash'][0].load()\n"
        "import json; print(json.dumps({'hash': h, 'max_sets': int(m.groupby('patient_key')['set'].nunique().max()),"
        " 'sets': sorted(m['set'].unique().tolist()), 'n': len(m)}))\n"
    )
    zenml_env = {**env, "ZENML_CONFIG_PATH": str(root / "state" / "zenml"), "ZENML_ANALYTICS_OPT_IN": "false"}
    done = subprocess.run([sys.executable, "-c", script], env=zenml_env, capture_output=True, text=True, check=True)
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["max_sets"] == 1 and facts["sets"] == ["test", "train", "val"] and facts["n"] == 36
    version = mlflow_client(root).get_model_version_by_alias("tiny-liver-lesion", "champion")
    assert version.tags["split_manifest_hash"] == facts["hash"]


def test_second_run_is_cached_and_registers_nothing(project, first_run):
    root, env = project
    before = len(mlflow_client(root).search_model_versions("name='tiny-liver-lesion'"))
    again = cli(root, env, "run", "--profile", "tiny")
    assert "used the cohort already in" in again.stdout and "matches data.dvc" in again.stdout
    assert "no retraining happened" in again.stdout
    assert len(mlflow_client(root).search_model_versions("name='tiny-liver-lesion'")) == before


@pytest.mark.slow
def test_retraining_registers_a_second_version_through_the_gate(project, first_run):
    root, env = project
    client = mlflow_client(root)
    before = {str(v.version) for v in client.search_model_versions("name='tiny-liver-lesion'")}
    cli(root, env, "run", "--profile", "tiny", "--no-cache")
    (second,) = [v for v in client.search_model_versions("name='tiny-liver-lesion'") if str(v.version) not in before]
    first = client.get_model_version("tiny-liver-lesion", "1")
    champion = client.get_model_version_by_alias("tiny-liver-lesion", "champion")
    # same seed, same data, same code: on CPU the retrained model scores exactly the same, so the
    # gate keeps the champion and the new version becomes the challenger
    assert second.tags["metric.roc_auc"] == first.tags["metric.roc_auc"]
    assert second.tags["metric.accuracy"] == first.tags["metric.accuracy"]
    assert str(champion.version) == "1" and second.tags["decision"] == "challenger"
    assert str(client.get_model_version_by_alias("tiny-liver-lesion", "challenger").version) == str(second.version)
    assert second.tags["compared_with"] == "v1"
    # both scored by their registered artefacts on the same patients: the same model, the same figures
    metrics = ("accuracy", "roc_auc", "recall", "specificity")
    assert {m: second.tags[f"gate.candidate.{m}"] for m in metrics} == {
        m: second.tags[f"gate.champion.{m}"] for m in metrics
    }


def test_a_setting_that_does_not_change_the_model_registers_no_second_version(project, first_run):
    root, env = project
    before = len(mlflow_client(root).search_model_versions("name='tiny-liver-lesion'"))
    again = cli(
        root,
        env,
        "run",
        "--profile",
        "tiny",
        "--set",
        "compare.models=[svm_texture]",
        "--set",
        "register.gate.min_margin=0.05",
    )
    assert "no retraining happened" in again.stdout
    assert len(mlflow_client(root).search_model_versions("name='tiny-liver-lesion'")) == before


def test_validation_failure_stops_before_training_with_a_readable_report(project, first_run):
    root, env = project
    before = len(mlflow_client(root).search_model_versions("name='tiny-liver-lesion'"))
    failed = cli(root, env, "run", "--profile", "unbalanced", check=False)
    assert failed.returncode != 0
    text = failed.stdout + failed.stderr
    assert "lesions.label" in text and "expect_column_mean_to_be_between" in text
    assert "nothing was trained or registered; the validation report:" in text
    client = mlflow_client(root)
    assert len(client.search_model_versions("name='tiny-liver-lesion'")) == before
    experiment = client.get_experiment_by_name("liver-lesion-classification")
    assert client.search_runs([experiment.experiment_id], "tags.profile = 'unbalanced'") == []  # never trained


@pytest.fixture(scope="module")
def stand_in_imagenet_weights(tmp_path_factory):
    """Weights files in the format of the ImageNet ones (same backbones, no top), with random values.

    They stand in for the real files (not on this machine, no download) to exercise the IPW path:
    the numbers they give say nothing about ImageNet pre-training.
    """
    import keras

    from liverlesion.model import BACKBONES

    folder = tmp_path_factory.mktemp("weights")
    paths = {}
    for key in ("inception_v3", "inception_resnet_v2"):
        keras.utils.set_random_seed(3)
        donor = BACKBONES[key].application(include_top=False, weights=None, input_shape=(75, 75, 3))
        paths[key] = folder / f"{key}_notop.weights.h5"
        donor.save_weights(paths[key])
    return paths


def test_compare_stops_before_any_work_when_imagenet_weights_are_missing(project, tmp_path):
    root, env = project
    empty = {**env, "KERAS_HOME": str(tmp_path)}
    done = cli(
        root, empty, "compare", "--profile", "tiny", "--models", "inception_v3_npw,inception_resnet_v2_ipw", check=False
    )
    assert done.returncode == 2
    assert "inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5" in done.stderr
    assert str(tmp_path / "models") in done.stderr and "NPW" in done.stderr
    assert "pipeline run" not in done.stdout  # nothing ran


@pytest.mark.slow
def test_compare_trains_the_five_models_of_table2_with_one_mlflow_run_each(
    project, first_run, stand_in_imagenet_weights
):
    root, env = project
    done = cli(
        root,
        env,
        "compare",
        "--profile",
        "tiny",
        "--set=train.epochs=1",  # what is checked is each model's run and its lineage, not what it learnt
        *[f"--set=compare.imagenet_weights.{k}={v}" for k, v in stand_in_imagenet_weights.items()],
    )
    out = done.stdout
    for label in (
        "SVM with texture features",
        "InceptionResNet-V2 (NPW)",
        "InceptionResNet-V2 (IPW)",
        "Inception-V3 (NPW)",
        "Proposed model (IPW)",
    ):
        assert f"| {label} |" in out, label
    client = mlflow_client(root)
    experiment = client.get_experiment_by_name("liver-lesion-classification")
    (table2_run,) = client.search_runs([experiment.experiment_id], "tags.model = 'table2'")
    zenml_run = table2_run.data.tags["zenml_run_name"]
    runs = client.search_runs([experiment.experiment_id], f"tags.zenml_run_name = '{zenml_run}'")
    by_model = {run.data.tags["model"]: run for run in runs}
    assert set(by_model) == {
        "table2",
        "svm_texture",
        "inception_resnet_v2_npw",
        "inception_resnet_v2_ipw",
        "inception_v3_npw",
        "inception_v3_ipw",
    }
    assert set(table2_run.data.tags["compared_runs"].split(",")) == {
        run.info.run_id for key, run in by_model.items() if key != "table2"
    }
    assert by_model["inception_resnet_v2_ipw"].data.params["weights"] == str(
        stand_in_imagenet_weights["inception_resnet_v2"]
    )
    assert by_model["inception_v3_npw"].data.params["weights"] == "None"
    assert by_model["inception_resnet_v2_npw"].data.params["backbone"] == "inception_resnet_v2"
    assert 0 <= by_model["svm_texture"].data.metrics["test_roc_auc"] <= 1
    for key, run in by_model.items():
        if key != "table2":
            metrics = run.data.metrics
            assert metrics["test_accuracy_lower"] <= metrics["test_accuracy"] <= metrics["test_accuracy_upper"], key
            assert table2_run.data.metrics[f"{key}.accuracy"] == pytest.approx(metrics["test_accuracy"]), key
    artifacts = {a.path for a in client.list_artifacts(table2_run.info.run_id, "table2")}
    assert {
        "table2/table2.md",
        "table2/table2.csv",
        "table2/roc_curves.png",
        "table2/test_predictions.csv",
    } <= artifacts
    reports = Path(out.split("reports: ")[1].split()[0])
    predictions = __import__("pandas").read_csv(reports / "test_predictions.csv")
    assert predictions.groupby("model")["lesion_id"].nunique().nunique() == 1  # every model, the same test lesions
    assert set(predictions.columns) >= {"model", "lesion_id", "patient_key", "label", "p_metastasis"}
    report = (reports / "table2.md").read_text()
    assert "different (in-house, 63-patient) cohort" in report
    # a reader sees which weights each row started from: here the stand-ins, not ImageNet
    assert (
        f"Proposed model (IPW): `inception_v3_ipw`, initial weights from {stand_in_imagenet_weights['inception_v3']}"
        in report
    )
    assert "Inception-V3 (NPW): `inception_v3_npw`, random initial weights (NPW)" in out


def test_export_writes_the_validated_split_patches_with_their_lineage(project, first_run, tmp_path):
    from liverlesion.patchset import load_patch_set

    root, env = project
    out = tmp_path / "tiny-patches.npz"
    done = cli(root, env, "export", "--profile", "tiny", str(out))
    assert f"wrote {out}" in done.stdout
    data = load_patch_set(out)
    version = mlflow_client(root).get_model_version("tiny-liver-lesion", "1")
    assert data.meta["split_manifest_hash"] == version.tags["split_manifest_hash"]
    assert data.meta["data_version"] == version.tags["data_version"]
    assert sum(data.meta["counts"].values()) == 36 and data["train"].x.shape[1:] == (75, 75, 3)
    assert not set(data["train"].patient_key) & set(data["test"].patient_key)


def test_predict_gives_the_probabilities_evaluate_gave_and_writes_its_outputs(project, first_run, tmp_path):
    """One preprocessing path: the champion scores a test patient's lesions through `predict` exactly
    as `evaluate` scored them in the pipeline."""
    import nibabel as nib
    import numpy as np
    import pandas as pd

    root, env = project
    reports = Path(first_run.stdout.split("reports: ")[1].split()[0])
    evaluated = pd.read_csv(reports / "test_predictions.csv")
    case = evaluated["lesion_id"].iloc[0].rsplit("-L", 1)[0]
    cases = pd.read_csv(root / "data" / "cases.csv").set_index("case_id")
    out = tmp_path / "answer"
    done = cli(
        root,
        env,
        "predict",
        str(root / "data" / cases.loc[case, "image"]),
        "--mask",
        str(root / "data" / cases.loc[case, "mask"]),
        "--mask-encoding",
        "class",
        "--model",
        "tiny-liver-lesion",
        "--version",
        "1",
        "--case-id",
        case,
        "--out",
        str(out),
    )
    assert "by tiny-liver-lesion v1" in done.stdout
    answered = pd.read_csv(out / "lesions.csv")
    same = evaluated.merge(answered, on="lesion_id", suffixes=("_evaluate", "_predict"))
    assert len(same) == (evaluated["lesion_id"].str.rsplit("-L", n=1).str[0] == case).sum() == len(answered)
    np.testing.assert_allclose(same["p_metastasis_predict"], same["p_metastasis_evaluate"], rtol=0, atol=1e-6)
    # ... calibrated as evaluate calibrated them: the network's own probability is another
    assert (same["p_network"] - same["p_metastasis_predict"]).abs().max() > 1e-4
    # ... and called at the version's operating point, not at 0.5
    threshold = float(mlflow_client(root).get_model_version("tiny-liver-lesion", "1").tags["decision_threshold"])
    clear = (answered["p_metastasis"] - threshold).abs() > 1e-5
    assert (answered["predicted"] == (answered["p_metastasis"] >= threshold))[clear].all()
    assert (answered["model_version"] == 1).all() and (answered["model_name"] == "tiny-liver-lesion").all()
    # the label volume codes each lesion by its predicted class, on the CT's own grid
    labels = nib.load(out / "lesion_classes.nii.gz")
    ct = nib.load(root / "data" / cases.loc[case, "image"])
    assert labels.shape == ct.shape and np.allclose(labels.affine, ct.affine)
    assert set(np.unique(np.asarray(labels.dataobj))) <= {0, 1, 2}
    document = json.loads((out / "lesions.json").read_text())
    assert len(document["lesions"]) == len(answered) and "LPS" in document["coordinates"]
    png = (out / "lesion_map.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_predict_refuses_bad_input_in_one_line(project, first_run, tmp_path):
    root, env = project
    cases = __import__("pandas").read_csv(root / "data" / "cases.csv")
    image, mask = root / "data" / cases["image"].iloc[0], root / "data" / cases["mask"].iloc[0]
    other_mask = root / "data" / cases["mask"].iloc[1]
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(image.read_bytes()[:2000])
    for args, expected in (
        ([str(broken), "--mask", str(other_mask)], "not a readable NIfTI image"),
        ([str(image), "--mask", str(other_mask)], "differs from CT grid"),
        ([str(image), "--mask", str(tmp_path / "none.nii.gz")], "no such mask file"),
        ([str(image), "--mask", str(mask), "--model", "no-such-model"], "no model models:/no-such-model@champion"),
    ):
        done = cli(root, env, "predict", *args, "--out", str(tmp_path / "x"), check=False)
        assert done.returncode == 2, (args, done.stderr)
        assert expected in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_predict_looks_the_version_up_in_a_second_process_with_the_same_answer(project, first_run, tmp_path):
    """With a second core, `predict` leaves the registry to a child process (``registry.lookup``) while it imports
    Keras, and never imports MLflow itself; on one core it looks the version up in process. Same answer."""
    import os

    from liverlesion.parallel import usable_cpus

    if usable_cpus() < 2:
        pytest.skip("one core: predict looks the version up in its own process")
    root, env = project
    cases = __import__("pandas").read_csv(root / "data" / "cases.csv")
    image, mask = root / "data" / cases["image"].iloc[0], root / "data" / cases["mask"].iloc[0]
    answers = {}
    for cores in ({0, 1}, {0}):
        out = tmp_path / f"cores-{len(cores)}"
        done = subprocess.run(
            [str(Path(sys.executable).with_name("liverlesion")), "predict", str(image), "--mask", str(mask)]
            + ["--model", "tiny-liver-lesion", "--out", str(out), "--json"],
            cwd=root,
            env={**env, "PYTHONPROFILEIMPORTTIME": "1"},  # each module the command imports, on standard error
            capture_output=True,
            text=True,
            timeout=600,
            preexec_fn=lambda cores=cores: os.sched_setaffinity(0, cores),
        )
        assert done.returncode == 0, done.stderr[-3000:]
        lines = done.stderr.splitlines()
        imported = {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}
        assert ("mlflow" in imported) == (len(cores) == 1), len(cores)
        assert "liverlesion_ops.registry.lookup" in imported
        answers[len(cores)] = json.loads(done.stdout)
    assert answers[2]["model"] == answers[1]["model"] == "models:/tiny-liver-lesion/1"  # the champion, resolved
    assert answers[2]["lesions"] == answers[1]["lesions"] and answers[2]["lesions"]


def test_the_registry_lookup_child_answers_nothing_where_the_version_cannot_be_served(project, first_run):
    """Its failures are the caller's to meet again and report: exit 1, nothing on standard output."""
    root, env = project
    for reference in ("models:/no-such-model@champion", "models:/tiny-liver-lesion/99"):
        done = subprocess.run(
            [sys.executable, "-m", "liverlesion_ops.registry.lookup", reference],
            cwd=root, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 1 and done.stdout == "", (reference, done.stdout, done.stderr[-2000:])
    done = subprocess.run(
        [sys.executable, "-m", "liverlesion_ops.registry.lookup", "models:/tiny-liver-lesion@champion"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    answer = json.loads(done.stdout)
    assert answer["version"] == "1" and Path(answer["network"]).is_file() and Path(answer["settings"]).is_file()


def test_evaluate_scores_a_registered_version_on_a_cohort_without_training(project, first_run, tmp_path):
    """`evaluate --model`: the version as it answers (its calibration, its operating point) on every typed lesion
    of a cohort, with intervals, calibration, breakdown and gallery, an MLflow run and the version's tags."""
    import numpy as np
    import pandas as pd

    root, env = project
    done = cli(
        root, env, "evaluate", "--model", "tiny-liver-lesion", "--version", "1", "--profile", "tiny",
        "--out", str(tmp_path / "external"), "--json",
    )  # fmt: skip
    record = json.loads(done.stdout)  # JSON alone on standard output
    assert record["model"] == "models:/tiny-liver-lesion/1" and record["data"]["lesions"] == 36
    version = mlflow_client(root).get_model_version("tiny-liver-lesion", "1")
    assert record["threshold"] == pytest.approx(float(version.tags["decision_threshold"]), abs=1e-5)
    assert record["calibration"] == "temperature"
    folder = Path(record["report"])
    for name in (
        "table2.md", "calibration.csv", "reliability.png", "breakdown.csv", "failures.png", "summary.json",
        "confusion_matrix.png", "roc_curve.png", "lesion_map.png", "report.html",
    ):  # fmt: skip
        assert (folder / name).stat().st_size > 0, name
    images, title = images_of(folder / "report.html", tmp_path)
    assert title.startswith("tiny-liver-lesion v1 on cohort")
    assert len(images) == 5 and all(image["complete"] and image["width"] > 0 for image in images), images
    scored = pd.read_csv(folder / "predictions.csv")
    assert len(scored) == 36 and scored["label"].isin([0, 1]).all()
    # the same answers as the pipeline's evaluate gave on the test lesions, which are among them
    reports = Path(first_run.stdout.split("reports: ")[1].split()[0])
    evaluated = pd.read_csv(reports / "test_predictions.csv")
    same = evaluated.merge(scored, on="lesion_id", suffixes=("_evaluate", "_external"))
    assert len(same) == len(evaluated)
    np.testing.assert_allclose(same["p_metastasis_external"], same["p_metastasis_evaluate"], rtol=0, atol=1e-6)
    lo, hi = record["intervals"]["accuracy"]
    assert lo <= record["metrics"]["accuracy"] <= hi
    # recorded: a run tagged job=evaluation naming the version and the cohort, and the version's own tags
    run = mlflow_client(root).get_run(record["mlflow_run_id"])
    assert run.data.tags["job"] == "evaluation" and run.data.tags["model_version"] == "1"
    assert run.data.tags["data_version"] == record["data"]["version"]
    prefix = f"external.{record['data']['version'][:12]}."
    tags = mlflow_client(root).get_model_version("tiny-liver-lesion", "1").tags
    assert tags[prefix + "lesions"] == "36" and tags[prefix + "run"] == record["mlflow_run_id"]
    assert float(tags[prefix + "accuracy"]) == pytest.approx(record["metrics"]["accuracy"], abs=1e-4)
    # the version's card (its description in the registry) and its audit list the evaluation
    description = mlflow_client(root).get_model_version("tiny-liver-lesion", "1").description
    summary = description.split("## Summary", 1)[1].split("\n## ", 1)[0]
    assert f"`{record['data']['version']}` (the training cohort: not external) 36 lesions" in summary
    assert record["model_card"] == f"runs:/{record['mlflow_run_id']}/model_card/model_card.md"
    card = Path(
        mlflow_client(root).download_artifacts(record["mlflow_run_id"], "model_card/model_card.md", str(tmp_path))
    ).read_text()
    external = card.split("## External evaluations", 1)[1].split("\n## ", 1)[0]
    assert f"| `{record['data']['version']}` (the training cohort: not external) |" in external
    audit = json.loads(cli(root, env, "audit", "v1", "--model", "tiny-liver-lesion", "--json").stdout)
    [evaluation] = [e for e in audit["evaluations"] if e["run"] == record["mlflow_run_id"]]
    assert evaluation["cohort"] == record["data"]["version"][:12] and evaluation["lesions"] == 36
    assert evaluation["metrics"]["accuracy"] == pytest.approx(record["metrics"]["accuracy"], abs=1e-4)
    text = cli(root, env, "audit", "v1", "--model", "tiny-liver-lesion").stdout
    assert f"cohort {record['data']['version'][:12]}: 36 lesions" in text


@pytest.mark.slow
def test_predict_batch_answers_a_folder_and_records_the_model_version(project, first_run):
    import pandas as pd

    root, env = project
    done = cli(
        root, env, "predict-batch", "--model", "tiny-liver-lesion", "--version", "1", "--profile", "tiny", "--json"
    )
    record = json.loads(done.stdout)  # JSON alone on standard output
    assert record["model_version"] == "1" and record["model_uri"] == "models:/tiny-liver-lesion/1"
    assert record["cases"] == 12 and record["lesions"] == 36
    answered = pd.read_csv(record["table"])
    reports = Path(first_run.stdout.split("reports: ")[1].split()[0])
    evaluated = pd.read_csv(reports / "test_predictions.csv")
    same = evaluated.merge(answered, on="lesion_id", suffixes=("_evaluate", "_batch"))
    assert len(same) == len(evaluated)
    assert (same["p_metastasis_batch"] - same["p_metastasis_evaluate"]).abs().max() < 1e-6
    assert (Path(record["outputs"]) / answered["case_id"].iloc[0] / "lesion_map.png").exists()
    run = mlflow_client(root).get_run(record["mlflow_run_id"])
    assert run.data.tags["job"] == "batch_inference" and run.data.tags["model_version"] == "1"


@pytest.mark.slow
def test_a_bad_case_stops_the_run_or_is_quarantined_by_configuration(project, first_run, tmp_path):
    import pandas as pd

    root, env = project
    cohort = tmp_path / "cohort"
    shutil.copytree(root / "data", cohort, copy_function=shutil.copyfile)  # not the read-only mode of linked files
    bad = pd.read_csv(cohort / "cases.csv").iloc[3]
    image = cohort / bad["image"]
    image.write_bytes(image.read_bytes()[:3000])  # truncated in transfer
    stopped = cli(root, env, "export", "--profile", "tiny", "--data", str(cohort), str(tmp_path / "a.npz"), check=False)
    assert stopped.returncode == 1
    assert f"case {bad['case_id']}: " in stopped.stdout + stopped.stderr and not (tmp_path / "a.npz").exists()
    kept = cli(
        root,
        env,
        "export",
        "--profile",
        "tiny",
        "--data",
        str(cohort),
        str(tmp_path / "b.npz"),
        "--set",
        "ingest.on_bad_case=quarantine",
    )
    assert "QUARANTINED 1 case(s)" in kept.stdout + kept.stderr
    from liverlesion.patchset import load_patch_set

    exported = load_patch_set(tmp_path / "b.npz")
    assert sum(exported.meta["counts"].values()) == 36 - int(bad["n_lesions"])
    assert exported.meta["data_version"].startswith("tree-")  # a folder outside DVC: its content hash


@pytest.mark.slow
def test_the_train_step_runs_on_the_backend_the_profile_names(project, first_run, tmp_path):
    """``train.backend: jax`` (what the paper profile asks for, with JAX's CUDA build on a GPU): the
    same DAG, the train step computing on JAX (its CPU build here) in mixed bfloat16, tracked and
    registered as usual, the registered network float32. The data steps are served from cache. It registers
    under a model name of its own, so that the tiny model's champion stays version 1."""
    import keras
    import mlflow

    root, env = project
    client = mlflow_client(root)
    name = "tiny-liver-lesion-jax"
    done = cli(
        root,
        {**env, **FAST_XLA_COMPILE},
        "run",
        "--profile",
        "tiny",
        "--set",
        "train.backend=jax",
        "--set",
        "train.precision=mixed_bfloat16",
        "--set",
        "train.run_eagerly=false",  # JAX compiled, as on a GPU: op by op it is slower than compiling, unlike TF
        "--set",
        "train.full_batches=true",  # one train step compiled, not a second for the last, smaller batch
        "--set",
        f"register.model_name={name}",
    )
    assert "no retraining happened" not in done.stdout
    (new,) = client.search_model_versions(f"name='{name}'")
    params = client.get_run(new.run_id).data.params
    assert params["keras_backend"] == "jax" and params["device"].startswith("jax ") and params["device"].endswith(")")
    assert params["backend"] == "jax" and params["trained_in"] == "mixed_bfloat16"
    mlflow.set_tracking_uri(f"sqlite:///{root / 'state' / 'mlflow' / 'mlflow.db'}")
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{new.version}", dst_path=str(tmp_path)))
    model = keras.saving.load_model(folder / "artifacts" / "model.keras", compile=False)
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}  # what evaluate and serving get
    if importlib.util.find_spec("torch") is None:  # not locked: a backend the machine lacks is refused in one line
        absent = cli(root, env, "run", "--profile", "tiny", "--set", "train.backend=torch", check=False)
        assert absent.returncode == 2
        assert (
            absent.stderr.strip().splitlines()[-1].startswith("error: train.backend is torch, which is not installed")
        )
