"""The model registry against a real SQLite MLflow store: registration, the gate on the same
patients, manual promotion and rollback, the lock between deciders and the journal that completes an
interrupted decision.

The models are tiny Keras networks whose figures are known by construction: ``swap(A)`` is A with
the two output columns exchanged, so P_swap = 1 - P_A and ROC AUC_swap = 1 - AUC_A on any lesion set.
"""

import base64
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from liverlesion.config import PatchConfig
from liverlesion.ingestion import ingest_cases, labelled_lesions, segment_cases, types_by_case
from liverlesion.phantom import generate_cohort
from liverlesion.predict import LesionPredictor
from liverlesion.promotion import GateRules, gate_scores
from liverlesion_ops.registry import decisions, locks, manual, registration
from liverlesion_ops.registry import store as registry_store
from liverlesion_ops.registry.gate import GateSet, cohort_gate_set, register_and_gate
from liverlesion_ops.registry.store import CHALLENGER, CHAMPION, PREVIOUS_CHAMPION, RegistryError
from liverlesion_ops.tracking import ensure_experiment
from tests.profiles import QUICK, with_changes

NAME = "test-lesion-classifier"
EXPERIMENT = "test-registry"
LINEAGE = {"data_version": "abc", "split_manifest_hash": "def", "git_commit": "123"}
METRICS = {
    "accuracy": 0.5,
    "balanced_accuracy": 0.5,
    "f1": 0.5,
    "roc_auc": 0.5,
    "precision": 0.5,
    "recall": 0.5,
    "specificity": 0.5,
}
PROFILE = {
    "name": "test",
    "patches": {"margin_mm": 2.0, "canvas": [24, 24], "output_size": None, "square_pixels": True},
    "evaluate": {"threshold": 0.5, "precision": "float32"},
}
INPUT = (24, 24, 3)
#: model A's weights: seed and scale chosen so that its probabilities spread over (0, 1) and its ROC AUC
#: on the cohort below is under 0.5 (so swap(A) beats it) and differs between the two halves
MODEL_SEED, WEIGHT_SCALE = 4, 0.05
COHORT = with_changes(QUICK.cohort, seed=3, n_patients=4, n_lesions=12, size_scale=0.4)
FIRST_HALF = {"PHX-001", "PHX-002"}


# --- the cohort and the models --------------------------------------------------------------------


@dataclass(frozen=True)
class Cohort:
    full: GateSet
    s1: GateSet  # the lesions of patients 1-2
    s2: GateSet  # the lesions of patients 3-4
    folder: Path  # the cohort folder itself (a pinned evaluation cohort)


def gate_set(cases: pd.DataFrame, lesions: pd.DataFrame, description: str) -> GateSet:
    labels = lesions.set_index("lesion_id")["label"].astype(int)
    return GateSet(
        labels,
        cases[cases["case_id"].isin(lesions["case_id"])].reset_index(drop=True),
        f"{description} ({len(labels)} lesions)",
    )


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Cohort:
    folder = generate_cohort(COHORT, tmp_path_factory.mktemp("registry-cohort") / "cohort")
    ingested = ingest_cases(folder, "v")
    lesions, _ = labelled_lesions(segment_cases(ingested.cases, ingested.crops, types_by_case(ingested.lesion_types)))
    first = lesions["patient_key"].isin(FIRST_HALF)
    assert first.any() and (~first).any()
    for part in (lesions, lesions[first], lesions[~first]):  # ROC AUC needs both classes
        assert set(part["label"]) == {0, 1}
    return Cohort(
        gate_set(ingested.cases, lesions, "all lesions"),
        gate_set(ingested.cases, lesions[first], "S1: patients 1-2"),
        gate_set(ingested.cases, lesions[~first], "S2: patients 3-4"),
        Path(folder),
    )


def dense_model(kernel: np.ndarray, bias: np.ndarray) -> keras.Model:
    inputs = keras.Input(INPUT)
    dense = keras.layers.Dense(2, activation="softmax")
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    dense.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return model


def weights_a() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(MODEL_SEED)
    return rng.normal(size=(int(np.prod(INPUT)), 2)) * WEIGHT_SCALE, np.zeros(2)


def model_a() -> keras.Model:
    return dense_model(*weights_a())


def swap_a() -> keras.Model:
    """A with its output columns exchanged: P(metastasis) = 1 - P_A(metastasis)."""
    kernel, bias = weights_a()
    return dense_model(kernel[:, ::-1].copy(), bias[::-1].copy())


def constant_model(p: float) -> keras.Model:
    """P(metastasis) = p for every lesion."""
    return dense_model(np.zeros((int(np.prod(INPUT)), 2)), np.log([1 - p, p]))


def scores(model: keras.Model, gate: GateSet) -> dict[str, float]:
    """A model's gate figures computed here, without the registry (the expected values)."""
    predictor = LesionPredictor(model, PatchConfig.model_validate(PROFILE["patches"]), 0.5, "float32")
    return gate_scores(gate.labels, predictor.score_cases(gate.cases, set(gate.labels.index)), 0.5)


@pytest.fixture(scope="module")
def expected(cohort) -> dict[str, dict[str, float]]:
    """Model A's figures on the three sets (the preconditions of the tests are checked here)."""
    a = model_a()
    figures = {"full": scores(a, cohort.full), "s1": scores(a, cohort.s1), "s2": scores(a, cohort.s2)}
    assert figures["full"]["roc_auc"] < 0.5  # swap(A) beats A
    assert figures["s1"]["roc_auc"] != pytest.approx(figures["s2"]["roc_auc"], abs=1e-3)
    return figures


# --- the store -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Store:
    client: MlflowClient
    experiment_id: str
    home: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite database with its tables created (MLflow's migrations take seconds), to copy."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = tmp_path_factory.mktemp("empty-store")
    SqlAlchemyStore(f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri())
    return folder / "mlflow.db"


@pytest.fixture()
def store(tmp_path, monkeypatch, empty_store) -> Store:
    project = tmp_path / "project"
    project.mkdir()
    (project / "data.dvc").write_text("")
    shutil.copyfile(empty_store, tmp_path / "mlflow.db")
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "LIVERLESION_HOME": str(tmp_path / "state"),
        "LIVERLESION_PROJECT": str(project),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    experiment_id = ensure_experiment(EXPERIMENT)  # artifacts under LIVERLESION_HOME (a SQLite store)
    assert Path(mlflow.get_experiment(experiment_id).artifact_location.removeprefix("file://")).is_relative_to(tmp_path)
    yield Store(registry_store.registry_client(), experiment_id, tmp_path / "state", env)
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def new_run(store: Store) -> str:
    """A training run for one registration."""
    return store.client.create_run(store.experiment_id).info.run_id


def network_file(store: Store, model: keras.Model) -> Path:
    """The network as the train step's artifact holds it: a native ``.keras`` file (what registration takes)."""
    store.home.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(dir=store.home)) / "model.keras"
    model.save(path)
    return path


def register(
    store: Store, model, gate: GateSet, rules: GateRules = GateRules("roc_auc", 0.0), run_id: str | None = None
) -> dict:
    return register_and_gate(
        network_file(store, model),
        run_id or new_run(store),
        NAME,
        METRICS,
        LINEAGE,
        PROFILE,
        {},
        "card",
        lambda: gate,
        rules,
        EXPERIMENT,
    )


def register_only(store: Store, model) -> str:
    file = network_file(store, model)
    return registration.register_version(file, new_run(store), NAME, METRICS, LINEAGE, PROFILE, {}, "card").version


def aliases(store: Store) -> dict[str, str]:
    return registry_store.aliases(store.client, NAME)


def tags(store: Store, version: str) -> dict[str, str]:
    return store.client.get_model_version(NAME, version).tags


def recorded(store: Store, version: str, who: str) -> dict[str, float]:
    """The gate figures recorded on a version (``who``: candidate or champion)."""
    prefix = f"gate.{who}."
    return {k.removeprefix(prefix): float(v) for k, v in tags(store, version).items() if k.startswith(prefix)}


def decision_runs(store: Store, job: str) -> list:
    return store.client.search_runs([store.experiment_id], f"tags.job = '{job}'")


def versions(store: Store) -> list[str]:
    return sorted(str(v.version) for v in store.client.search_model_versions(f"name='{NAME}'"))


def journal(store: Store) -> Path:
    return store.home / "locks" / f"registry-{NAME}.pending.json"


# --- the gate ----------------------------------------------------------------------------------------


def test_the_gate_decides_on_the_same_lesions_and_moves_aliases(store, cohort, expected):
    first = register(store, model_a(), cohort.full)
    assert first["version"] == "1" and first["created"] and first["decision"] == "promoted"
    assert aliases(store) == {CHAMPION: "1"}
    assert tags(store, "1")["compared_with"] == "none" and recorded(store, "1", "champion") == {}
    assert recorded(store, "1", "candidate") == pytest.approx(expected["full"], abs=1e-6)

    # swap(A) beats A, but not by the margin asked for: kept as challenger
    kept = register(store, swap_a(), cohort.full, GateRules("roc_auc", min_margin=0.9))
    assert kept["decision"] == "challenger" and "by more than 0.9000" in kept["reason"]
    assert aliases(store) == {CHAMPION: "1", CHALLENGER: "2"}
    candidate, champion = recorded(store, "2", "candidate"), recorded(store, "2", "champion")
    assert candidate["roc_auc"] == pytest.approx(1 - champion["roc_auc"], abs=1e-6)
    assert champion == pytest.approx(expected["full"], abs=1e-6)

    # the same network without a margin: promoted iff its figure beats the champion's
    swapped = register(store, swap_a(), cohort.full)
    candidate, champion = recorded(store, "3", "candidate"), recorded(store, "3", "champion")
    assert candidate["roc_auc"] == pytest.approx(1 - champion["roc_auc"], abs=1e-6)
    assert (swapped["decision"] == "promoted") == (candidate["roc_auc"] > champion["roc_auc"])
    assert swapped["decision"] == "promoted"  # AUC_A < 0.5 (checked in `expected`)
    # the challenger lost to the champion now replaced: no contender until the next one
    assert aliases(store) == {CHAMPION: "3", PREVIOUS_CHAMPION: "1"}
    assert tags(store, "1")["decision"] == "superseded" and "v3 passed the gate" in tags(store, "1")["decision_reason"]
    v3 = tags(store, "3")
    assert v3["decision"] == "promoted" and v3["compared_with"] == "v1" and v3["decision_job"] == "gate"
    assert v3["gate_scored_on"].startswith(cohort.full.description)
    assert json.loads(v3["gate_rules"]) == {"primary_metric": "roc_auc", "min_margin": 0.0, "floors": {}}
    assert v3["data_version"] == "abc" and v3["metric.roc_auc"] == "0.500000"  # lineage and training figures

    # the champion's own weights again: a tie is not an improvement
    tie = register(store, swap_a(), cohort.full)
    assert tie["decision"] == "challenger" and "does not beat" in tie["reason"]
    assert recorded(store, "4", "candidate") == recorded(store, "4", "champion")
    assert aliases(store) == {CHAMPION: "3", PREVIOUS_CHAMPION: "1", CHALLENGER: "4"}

    # below a floor: refused, and no alias names it
    refused = register(store, constant_model(0.3), cohort.full, GateRules("roc_auc", 0.0, floors={"recall": 0.5}))
    assert refused["decision"] == "refused" and "recall 0.0000 < floor 0.5000" in refused["reason"]
    assert aliases(store) == {CHAMPION: "3", PREVIOUS_CHAMPION: "1", CHALLENGER: "4"}
    assert tags(store, "5")["decision"] == "refused" and versions(store) == ["1", "2", "3", "4", "5"]

    # every decision is an MLflow run, keyed by its id
    runs = decision_runs(store, "gate")
    assert {r.data.tags["model_version"]: r.data.tags["decision"] for r in runs} == {
        "1": "promoted",
        "2": "challenger",
        "3": "promoted",
        "4": "challenger",
        "5": "refused",
    }
    assert len({r.data.tags["decision_id"] for r in runs}) == 5
    assert all(r.data.tags["model_name"] == NAME and r.info.status == "FINISHED" for r in runs)
    gate_v3 = next(r for r in runs if r.data.tags["model_version"] == "3")
    assert gate_v3.data.metrics["candidate_roc_auc"] == pytest.approx(1 - expected["full"]["roc_auc"], abs=1e-6)
    assert gate_v3.data.metrics["champion_roc_auc"] == pytest.approx(expected["full"]["roc_auc"], abs=1e-6)
    assert not journal(store).exists()


def test_the_champion_is_rescored_on_the_challengers_patients(store, cohort, expected):
    register(store, model_a(), cohort.s1)
    on_s1 = recorded(store, "1", "candidate")
    assert on_s1 == pytest.approx(expected["s1"], abs=1e-6)

    second = register(store, swap_a(), cohort.s2)
    champion, candidate = recorded(store, "2", "champion"), recorded(store, "2", "candidate")
    assert champion == pytest.approx(expected["s2"], abs=1e-6)  # A's figures on S2 ...
    assert champion["roc_auc"] != pytest.approx(on_s1["roc_auc"], abs=1e-3)  # ... not those it was promoted with
    assert candidate["roc_auc"] == pytest.approx(1 - champion["roc_auc"], abs=1e-6)
    assert tags(store, "2")["gate_scored_on"].startswith(cohort.s2.description)
    assert second["scored_on"].startswith(cohort.s2.description)
    assert second["decision"] == ("promoted" if candidate["roc_auc"] > champion["roc_auc"] else "challenger")


def test_a_pinned_evaluation_cohort_is_read_from_its_folder(store, cohort, expected):
    pinned = cohort_gate_set(cohort.folder)
    assert pinned.description.startswith(f"the pinned evaluation cohort {cohort.folder}")
    assert sorted(pinned.labels.index) == sorted(cohort.full.labels.index)
    assert (pinned.labels.loc[cohort.full.labels.index] == cohort.full.labels).all()
    first = register(store, model_a(), pinned)
    assert first["scored_on"].startswith("the pinned evaluation cohort")
    assert recorded(store, "1", "candidate") == pytest.approx(expected["full"], abs=1e-6)


def test_registration_is_idempotent_per_training_run(store, cohort):
    run_id = new_run(store)
    first = register(store, model_a(), cohort.full, run_id=run_id)
    again = register(store, model_a(), cohort.full, run_id=run_id)
    assert first["created"] and not again["created"]
    assert again["version"] == first["version"] == "1" and again["decision"] == "promoted"
    assert versions(store) == ["1"] and len(decision_runs(store, "gate")) == 1
    # the served model: its settings, and the GPU-capable TensorFlow pinned (not the CPU-only build)
    version = store.client.get_model_version(NAME, "1")
    assert version.description == "card" and version.run_id == run_id
    requirements = Path(mlflow.pyfunc.get_model_dependencies(f"models:/{NAME}@champion")).read_text().split()
    assert any(r.startswith("tensorflow==") for r in requirements)
    assert not any(r.startswith("tensorflow-cpu") for r in requirements)


def test_the_served_model_names_its_registered_version_in_every_row(store, cohort):
    """A client of the served model (HTTP, pyfunc) learns which version answered: it is in every row."""
    register_only(store, model_a())
    second = register_only(store, swap_a())
    case = cohort.full.cases.iloc[0]
    request = pd.DataFrame(
        [
            {
                "case_id": case.case_id,
                "image": base64.b64encode(Path(case.image_path).read_bytes()).decode(),
                "mask": base64.b64encode(Path(case.mask_path).read_bytes()).decode(),
            }
        ]
    )
    rows = mlflow.pyfunc.load_model(f"models:/{NAME}/{second}").predict(request)
    assert second == "2" and len(rows) >= 1
    assert set(rows["model_version"]) == {"2"} and set(rows["model_name"]) == {NAME}


def bn_model() -> keras.Model:
    """A small network with a batch normalisation to fold (non-trivial statistics), as the fast path meets them."""
    keras.utils.set_random_seed(MODEL_SEED)
    inputs = keras.Input(INPUT)
    x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    norm = keras.layers.BatchNormalization()
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Activation("relu")(norm(x)))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="softmax")(x))
    rng = np.random.default_rng(MODEL_SEED)
    norm.set_weights([rng.uniform(0.5, 1.5, 4), rng.normal(0, 0.3, 4), rng.normal(0, 0.5, 4), rng.uniform(0.5, 2, 4)])
    return model


def test_predict_reads_the_registry_files_directly_caches_the_scoring_network_and_answers_as_the_pyfunc(
    store, cohort, monkeypatch
):
    """``predict``'s fast path (the local registry's files, no pyfunc; the folded bfloat16 network kept between
    processes) gives the probabilities of the pyfunc ``mlflow models serve`` loads, bit for bit."""
    from liverlesion import precision
    from liverlesion.imaging import load_nifti
    from liverlesion_ops import project

    profile = {**PROFILE, "evaluate": {"threshold": 0.5, "precision": "bfloat16"}}
    version = registration.register_version(
        network_file(store, bn_model()), new_run(store), NAME, METRICS, LINEAGE, profile, {}, "c"
    )
    version = version.version
    assert registration.local_model_files(NAME, version) is not None  # a SQLite store: the files are here
    case = cohort.full.cases.iloc[0]
    request = pd.DataFrame(
        [{"case_id": case.case_id, "image": base64.b64encode(Path(case.image_path).read_bytes()).decode(),
          "mask": base64.b64encode(Path(case.mask_path).read_bytes()).decode()}]
    )  # fmt: skip
    served = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}").predict(request)["p_metastasis"].to_numpy()
    assert len(served) >= 2 and np.unique(served).size > 1

    folds, fold = [], precision.inference_model
    monkeypatch.setattr(precision, "inference_model", lambda *args: folds.append(1) or fold(*args))
    image, meta = load_nifti(case.image_path)
    mask, _ = load_nifti(case.mask_path)

    def answered() -> tuple[np.ndarray, object]:
        predictor = registration.load_registered_predictor(NAME, version)
        return predictor.predict(image, meta, mask, case.case_id).results["p_metastasis"].to_numpy(), predictor

    cache = project.scoring_cache_dir()
    first, made = answered()  # loads the network, folds it, keeps the scoring network
    assert folds == [1] and made.model is not None and len(list(cache.glob("*.keras"))) == 1
    second, cached = answered()  # the next process: from the cache, nothing folded
    assert folds == [1] and cached.model is None
    np.testing.assert_array_equal(first, served)
    np.testing.assert_array_equal(second, served)

    entry = next(cache.glob("*.keras"))
    entry.write_bytes(b"half a file")  # a damaged entry is made again
    third, _ = answered()
    assert folds == [1, 1] and entry.stat().st_size > 1000
    np.testing.assert_array_equal(third, served)


def test_the_served_model_refuses_a_request_beyond_its_limits_before_decoding_it(store, cohort, monkeypatch):
    from mlflow.exceptions import MlflowException

    from liverlesion import contract

    version = register_only(store, model_a())
    served = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}")
    case = cohort.full.cases.iloc[0]
    row = {
        "case_id": case.case_id,
        "image": base64.b64encode(Path(case.image_path).read_bytes()).decode(),
        "mask": base64.b64encode(Path(case.mask_path).read_bytes()).decode(),
    }
    too_many = pd.DataFrame([row] * (contract.MAX_CASES_PER_REQUEST + 1))
    with pytest.raises(MlflowException, match=r"9 cases in one request, more than the limit of 8"):
        served.predict(too_many)
    # a file that would decode past the limit: this test's small CT stands for a huge one, the limit lowered
    monkeypatch.setattr(contract, "MAX_REQUEST_FILE_BYTES", len(row["image"]) // 2)
    with pytest.raises(MlflowException, match=rf"case {case.case_id}: image would decode to [\d,]+ bytes"):
        served.predict(pd.DataFrame([row]))


def test_the_served_model_scores_at_most_so_many_cases_at_once_whatever_the_clients(store, cohort):
    from concurrent.futures import ThreadPoolExecutor

    from liverlesion import contract

    version = register_only(store, model_a())
    served = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}")
    model = served.unwrap_python_model()
    scoring, state, lock = model.predictor.predict, {"now": 0, "most": 0}, threading.Lock()

    def slow_predict(*args, **kwargs):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.3)
        try:
            return scoring(*args, **kwargs)
        finally:
            with lock:
                state["now"] -= 1

    model.predictor.predict = slow_predict
    case = cohort.full.cases.iloc[0]
    row = {
        "case_id": case.case_id,
        "image": base64.b64encode(Path(case.image_path).read_bytes()).decode(),
        "mask": base64.b64encode(Path(case.mask_path).read_bytes()).decode(),
    }
    with ThreadPoolExecutor(6) as clients:  # the scoring server runs each request in a thread of its own
        answers = list(clients.map(lambda _: served.predict(pd.DataFrame([row])), range(6)))
    assert all(len(answer) >= 1 for answer in answers)
    assert state["most"] == contract.MAX_CASES_IN_FLIGHT


def test_a_failing_gate_leaves_nothing_behind(store, cohort):
    register(store, model_a(), cohort.full)
    labels = pd.concat([cohort.full.labels, pd.Series({"case_999-L01": 1})])
    broken = GateSet(labels, cohort.full.cases, "a set with a lesion no case holds")
    with pytest.raises(ValueError, match="were not scored"):
        register(store, swap_a(), broken)
    assert versions(store) == ["1"]
    assert aliases(store) == {CHAMPION: "1"}
    assert len(decision_runs(store, "gate")) == 1 and not journal(store).exists()


# --- manual decisions ----------------------------------------------------------------------------------


def test_promote_and_rollback_by_hand(store):
    for _ in range(3):
        register_only(store, model_a())
    with pytest.raises(RegistryError, match="no previous_champion to roll back to \\(champion: none\\)"):
        manual.rollback(NAME, "nothing to roll back", EXPERIMENT)

    first = manual.promote(NAME, "1", "the first one", EXPERIMENT)
    assert first["previous_champion"] is None and aliases(store) == {CHAMPION: "1"}
    with pytest.raises(RegistryError, match="no previous_champion to roll back to \\(champion: v1\\)"):
        manual.rollback(NAME, "nothing to roll back", EXPERIMENT)
    with pytest.raises(RegistryError, match="v1 is the champion already"):
        manual.promote(NAME, "1", "again", EXPERIMENT)
    with pytest.raises(RegistryError, match="no version 9"):
        manual.promote(NAME, "9", "no such version", EXPERIMENT)

    reason = "validated on the March cohort"
    result = manual.promote(NAME, "2", reason, EXPERIMENT)
    assert result["previous_champion"] == "1" and result["reason"] == reason
    assert aliases(store) == {CHAMPION: "2", PREVIOUS_CHAMPION: "1"} == result["aliases"]
    promoted, superseded = tags(store, "2"), tags(store, "1")
    assert promoted["decision"] == "promoted" and promoted["decision_reason"] == reason
    assert promoted["decision_job"] == "promote" and promoted["compared_with"] == "v1"
    assert promoted["decision_by"] and promoted["decision_by"] == result["by"]
    assert datetime.fromisoformat(promoted["decision_at"]).tzinfo is not None
    assert superseded["decision"] == "superseded" and reason in superseded["decision_reason"]
    assert "v2" in superseded["decision_reason"]
    runs = {r.data.tags["model_version"]: r.data.tags for r in decision_runs(store, "promote")}
    assert set(runs) == {"1", "2"}
    assert runs["2"]["decision_reason"] == reason and runs["2"]["previous_champion"] == "1"
    assert runs["1"]["previous_champion"] == "none"

    back = manual.rollback(NAME, "false negatives on ward 3", EXPERIMENT)
    assert back["version"] == "1" and back["rolled_back"] == "2"
    assert aliases(store) == {CHAMPION: "1", PREVIOUS_CHAMPION: "2"}
    assert tags(store, "1")["decision"] == "restored" and tags(store, "2")["decision"] == "rolled_back"
    assert tags(store, "1")["decision_reason"] == "false negatives on ward 3"
    assert tags(store, "1")["decision_job"] == "rollback" and tags(store, "1")["compared_with"] == "v2"

    manual.rollback(NAME, "undo the rollback", EXPERIMENT)  # a second rollback undoes the first
    assert aliases(store) == {CHAMPION: "2", PREVIOUS_CHAMPION: "1"}
    assert tags(store, "2")["decision"] == "restored" and tags(store, "1")["decision"] == "rolled_back"
    rollbacks = decision_runs(store, "rollback")
    assert sorted((r.data.tags["model_version"], r.data.tags["rolled_back_version"]) for r in rollbacks) == [
        ("1", "2"),
        ("2", "1"),
    ]
    assert all(r.data.tags["decision"] == "rolled_back" for r in rollbacks)

    # promoting the challenger by hand takes the challenger alias away from it
    store.client.set_registered_model_alias(NAME, CHALLENGER, "3")
    manual.promote(NAME, "3", "the challenger after all", EXPERIMENT)
    assert aliases(store) == {CHAMPION: "3", PREVIOUS_CHAMPION: "2"}
    assert not journal(store).exists()


def test_two_concurrent_promotions_leave_exactly_one_champion(store):
    register_only(store, model_a())
    register_only(store, model_a())
    command = str(Path(sys.executable).with_name("liverlesion"))
    env = {**os.environ, **store.env}
    processes = {
        version: subprocess.Popen(
            [
                command,
                "promote",
                version,
                "--reason",
                f"race {version}",
                "--model",
                NAME,
                "--experiment",
                EXPERIMENT,
                "--json",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for version in ("1", "2")
    }
    outputs = {version: process.communicate(timeout=300) for version, process in processes.items()}
    for version, process in processes.items():
        assert process.returncode == 0, outputs[version]
    results = {version: json.loads(out[out.index("{") :]) for version, (out, _) in outputs.items()}

    now = aliases(store)
    winner = now[CHAMPION]
    loser = {"1": "2", "2": "1"}[winner]
    assert now == {CHAMPION: winner, PREVIOUS_CHAMPION: loser}
    # serialised: the second saw the first as champion, the first saw none
    assert results[winner]["previous_champion"] == loser and results[loser]["previous_champion"] is None
    assert tags(store, winner)["decision"] == "promoted" and tags(store, loser)["decision"] == "superseded"
    runs = decision_runs(store, "promote")
    assert sorted(r.data.tags["model_version"] for r in runs) == ["1", "2"]
    assert not journal(store).exists()


def test_an_interrupted_decision_is_completed_by_the_next_decider(store, monkeypatch, caplog):
    register_only(store, model_a())
    register_only(store, model_a())
    manual.promote(NAME, "1", "the first one", EXPERIMENT)
    original = MlflowClient.set_registered_model_alias
    calls = []

    def dies_on_the_second_move(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(MlflowClient, "set_registered_model_alias", dies_on_the_second_move)
        with pytest.raises(KeyboardInterrupt):
            manual.promote(NAME, "2", "killed half-way", EXPERIMENT)
    assert len(calls) == 2
    assert aliases(store) == {CHAMPION: "2"}  # half moved: previous_champion is missing
    assert journal(store).exists()
    pending = json.loads(journal(store).read_text())
    assert pending["aliases"] == {CHAMPION: "2", PREVIOUS_CHAMPION: "1"}

    with caplog.at_level(logging.INFO, logger="liverlesion_ops"), decisions.registry_lock(NAME, "x"):
        pass
    assert "completed an interrupted decision" in caplog.text
    assert aliases(store) == {CHAMPION: "2", PREVIOUS_CHAMPION: "1"}
    assert not journal(store).exists()
    assert tags(store, "2")["decision"] == "promoted" and tags(store, "1")["decision"] == "superseded"
    keyed = store.client.search_runs([store.experiment_id], f"tags.decision_id = '{pending['id']}'")
    assert len(keyed) == 1 and keyed[0].data.tags["job"] == "promote"
    assert len(decision_runs(store, "promote")) == 2


# --- the store lock: what a reader, a fast clock or a shared host name can no longer do -----------------------


def _plant_lock(store: Store, **tags: str) -> None:
    """A store lock as another decider (or a reader) would leave it."""
    store.client.create_registered_model(NAME + locks.SERVER_LOCK_SUFFIX, tags={"token": "theirs", **tags})


def test_a_lock_claiming_a_far_future_start_is_broken_once_the_servers_lease_runs_out(store, monkeypatch):
    register_only(store, model_a())
    # as a reader did: since_epoch far in the future, owned by a process on another machine
    _plant_lock(store, owner="elsewhere/0123456789ab:4242:1", since_epoch="99999999999", user="mallory")
    held = locks.store_lock_tags(store.client, NAME + locks.SERVER_LOCK_SUFFIX)
    created = float(held[locks.CREATED_MS]) / 1000
    assert abs(created - time.time()) < 60  # the tracking server's own creation time, not the tag's
    assert locks._abandoned(held) is None  # within the lease: it may be alive
    monkeypatch.setattr(locks.time, "time", lambda: created + locks.SERVER_LOCK_LEASE_S + 1)
    assert "more than 30 minutes" in locks._abandoned(held)
    monkeypatch.undo()
    # a start the server put far after this clock's now (a clock gone wrong) is no lease either
    monkeypatch.setattr(locks.time, "time", lambda: created - locks.SERVER_LOCK_LEASE_S - 1)
    assert locks._abandoned(held) is not None


def test_a_process_of_another_pid_namespace_with_the_same_host_name_is_not_taken_for_dead():
    host, key = locks.machine().split("/")
    assert host == socket.gethostname() and len(key) == 12
    # the pid is free here, but the owner ran in another container that shares this host name
    assert locks.process_gone(f"{host}/ffffffffffff:999999:1") is None
    assert locks.process_gone(f"{locks.machine()}:999999:1") is True  # here, that process has ended
    assert locks.process_gone(locks.process_id()) is False


def test_a_decider_whose_lock_was_broken_writes_nothing(store):
    register_only(store, model_a())
    manual.promote(NAME, "1", "the first one", EXPERIMENT)
    before = dict(store.client.get_registered_model(NAME).tags)
    with decisions.registry_lock(NAME, "a decider taken for dead") as client:
        # another decider broke this one's lock and took its own
        client.delete_registered_model(NAME + locks.SERVER_LOCK_SUFFIX)
        _plant_lock(store, owner=locks.process_id())
        entry = {"run": {"name": "x"}, "aliases": {CHAMPION: "1"}, "tags": {}}
        with pytest.raises(RegistryError, match="was broken by another decider"):
            decisions.decide_and_record(client, NAME, entry)
        client.delete_registered_model(NAME + locks.SERVER_LOCK_SUFFIX)
    assert dict(store.client.get_registered_model(NAME).tags) == before  # not even last_decision
    assert not journal(store).exists()


def test_retired_locks_a_decider_could_not_delete_are_swept_by_the_next_one(store, caplog):
    lock = NAME + locks.SERVER_LOCK_SUFFIX
    left = [f"{lock}{locks.RETIRED_INFIX}0a1b", f"{lock}.breaker{locks.RETIRED_INFIX}2c3d"]
    others = [
        f"other{locks.SERVER_LOCK_SUFFIX}{locks.RETIRED_INFIX}4e5f",
        f"{NAME}-retired-notes",
        f"{lock}.x{locks.SERVER_LOCK_SUFFIX}{locks.RETIRED_INFIX}6a7b",  # the retired lock of model `<lock>.x`
    ]
    for name in left + others:  # as the server going away between the rename and the delete leaves them
        store.client.create_registered_model(name)
    with caplog.at_level(logging.INFO, logger="liverlesion_ops"), decisions.registry_lock(NAME, "the next decider"):
        pass
    assert "deleted the retired registry lock(s)" in caplog.text and all(name in caplog.text for name in left)
    remaining = {m.name for m in store.client.search_registered_models()}
    assert remaining == set(others)  # another model's, and a name that only looks alike, stay
