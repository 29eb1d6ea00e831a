"""The MLflow registration is all or nothing, against a real SQLite MLflow store."""

import keras
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from steps.registry import register_model_version

NAME = "test-model"
LINEAGE = {"data_version": "abc", "split_manifest_hash": "def", "git_commit": "123"}


@pytest.fixture()
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment("t", artifact_location=(tmp_path / "artifacts").as_uri())
    yield MlflowClient(uri, uri), experiment
    mlflow.set_tracking_uri(None)


def tiny_model():
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Flatten()(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))


def new_run(experiment):
    with mlflow.start_run(experiment_id=experiment) as run:
        return run.info.run_id


def test_gate_moves_champion_only_on_improvement(store):
    client, experiment = store
    first = register_model_version(tiny_model(), new_run(experiment), NAME, {"roc_auc": 0.7}, LINEAGE,
                                   "roc_auc", "champion", "challenger")
    assert first.version == "1" and first.alias == "champion"
    worse = register_model_version(tiny_model(), new_run(experiment), NAME, {"roc_auc": 0.6}, LINEAGE,
                                   "roc_auc", "champion", "challenger")
    assert worse.alias == "challenger"
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    better = register_model_version(tiny_model(), new_run(experiment), NAME, {"roc_auc": 0.9}, LINEAGE,
                                    "roc_auc", "champion", "challenger")
    assert better.alias == "champion"
    v3 = client.get_model_version_by_alias(NAME, "champion")
    assert str(v3.version) == "3"
    assert v3.tags["data_version"] == "abc" and v3.tags["metric.roc_auc"] == "0.900000"
    assert v3.tags["promotion"] == "champion" and v3.tags["compared_with"] == "v1"
    served = mlflow.pyfunc.load_model(f"models:/{NAME}@champion").unwrap_python_model()
    network = served.predictor.model
    assert network.predict(np.zeros((1, 4, 4, 3)), verbose=0).shape == (1, 2)
    assert served.settings["model_name"] == NAME and served.settings["threshold"] == 0.5
    # the serving environment: the TensorFlow build that uses a GPU where there is one, not the CPU-only one
    requirements = mlflow.pyfunc.get_model_dependencies(f"models:/{NAME}@champion")
    pinned = open(requirements).read().split()
    assert "tensorflow==2.21.0" in pinned and not any(r.startswith("tensorflow-cpu") for r in pinned)


def test_failure_after_registration_leaves_nothing_behind(store):
    client, experiment = store
    register_model_version(tiny_model(), new_run(experiment), NAME, {"roc_auc": 0.7}, LINEAGE,
                           "roc_auc", "champion", "challenger")
    with pytest.raises(KeyError):
        # the gate's metric is missing: fails after the version was created
        register_model_version(tiny_model(), new_run(experiment), NAME, {"accuracy": 0.99}, LINEAGE,
                               "roc_auc", "champion", "challenger")
    versions = client.search_model_versions(f"name='{NAME}'")
    assert [str(v.version) for v in versions] == ["1"]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"


def test_a_retrained_tie_is_not_promoted_even_where_the_tag_rounds_down(store):
    client, experiment = store
    auc = 2 / 9  # its tag, "0.222222", is below the value itself
    register_model_version(tiny_model(), new_run(experiment), NAME, {"roc_auc": auc}, LINEAGE,
                           "roc_auc", "champion", "challenger")
    again = register_model_version(tiny_model(), new_run(experiment), NAME, {"roc_auc": auc}, LINEAGE,
                                   "roc_auc", "champion", "challenger")
    assert again.alias == "challenger" and not again.decision.promote
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
