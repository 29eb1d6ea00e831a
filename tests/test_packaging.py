"""The domain package installs and works on its own: no ZenML, MLflow, DVC, Great Expectations, CLI or TensorFlow.

A GPU machine or the step image trains with ``liverlesion`` and a Keras backend only; orchestration
(``liverlesion_ops``, ``steps``, ``pipelines``) brings the rest through the ``ops`` extra.
"""

import importlib.util
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.support import backend_or_skip, without

REPO = Path(__file__).resolve().parents[1]
ORCHESTRATION = ("zenml", "mlflow", "dvc", "great_expectations", "typer", "fastapi", "tensorflow")


def test_the_domain_packages_dependencies_leave_out_orchestration_and_backends():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = {Requirement(r).name.replace("_", "-") for r in project["dependencies"]}
    assert base.isdisjoint(
        {"zenml", "mlflow", "dvc", "great-expectations", "typer", "fastapi", "tensorflow-cpu", "tensorflow", "jax"}
    )
    assert "keras" in base
    extras = {name: {Requirement(r).name for r in reqs} for name, reqs in project["optional-dependencies"].items()}
    assert {"zenml", "mlflow", "dvc", "great-expectations", "typer"} <= extras["ops"]
    assert {"kfp", "kfp-kubernetes"} <= extras["kubeflow"] and "jax" in extras["jax-cuda"]
    # the CLI is orchestration's: the domain has no entry point of its own
    assert project["scripts"]["liverlesion"].startswith("liverlesion_ops.")


def test_every_domain_module_imports_and_a_profile_reads_without_orchestration(tmp_path):
    backend_or_skip("jax")
    blocked = without(tmp_path, ORCHESTRATION + ("liverlesion_ops", "steps", "pipelines", "torch"))
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([str(blocked), str(REPO / "src")]),
    }
    script = (
        "import importlib, pkgutil, liverlesion\n"
        "names = [m.name for m in pkgutil.walk_packages(liverlesion.__path__, 'liverlesion.')]\n"
        "for name in names: importlib.import_module(name)\n"
        "from liverlesion.config import load_profile\n"
        "import keras\n"
        "print(len(names), keras.backend.backend(), load_profile('paper', 'configs').train.protocol().epochs)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    count, backend, epochs = done.stdout.split()
    assert int(count) >= 30 and backend == "jax" and epochs == "103"
    for name in ORCHESTRATION:  # the blocking itself works
        probe = subprocess.run([sys.executable, "-c", f"import {name}"], env=env, capture_output=True, text=True)
        assert "is not on the GPU machine" in probe.stderr, name


def test_the_profiles_backend_is_refused_when_keras_already_loaded_another():
    """``train.backend`` sets KERAS_BACKEND before Keras loads; after, a different one is an error, not a silent mix."""
    import keras  # loaded here with the suite's backend

    from liverlesion_ops.environment import use_keras_backend

    loaded = keras.backend.backend()
    assert use_keras_backend(None) == os.environ.get("KERAS_BACKEND", "tensorflow") == loaded  # none named: Keras's own
    assert use_keras_backend(loaded) == loaded
    other = "jax" if loaded != "jax" else "tensorflow"
    with pytest.raises(RuntimeError, match=f"train.backend is {other}, but Keras is already loaded with {loaded}"):
        use_keras_backend(other)


def test_a_backend_that_is_not_installed_is_named_before_keras_loads():
    """In a fresh process (Keras not loaded yet), a backend the machine lacks is an error naming what to install."""
    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed here (it is not locked): no backend is missing to be named")
    script = (
        "import sys\nfrom liverlesion_ops.environment import use_keras_backend\n"
        "try:\n    use_keras_backend('torch')\nexcept RuntimeError as err:\n    print(err)\n"
        "print('keras' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    message, keras_loaded = done.stdout.strip().splitlines()
    assert message.startswith("train.backend is torch, which is not installed here") and keras_loaded == "False"
