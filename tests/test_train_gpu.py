"""The standalone GPU entry point, under KERAS_BACKEND=jax on CPU, on a machine without TensorFlow.

TensorFlow is blocked in the child process (an import hook), as on the GPU machines, which have
Keras + JAX only: a hidden TensorFlow dependency fails here rather than there.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from liverlesion.patchset import export_patches
from tests.test_patchset import tiny_split

pytest.importorskip("jax", reason="JAX is a test dependency (requirements.lock); install it to test bench/train_gpu.py")

REPO = Path(__file__).resolve().parents[1]
WITHOUT_TENSORFLOW = """
import importlib.abc, runpy, sys

class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "zenml", "mlflow"):
            raise ModuleNotFoundError(f"No module named {name!r} (not on the GPU machine)")

sys.meta_path.insert(0, NoTensorFlow())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_train_gpu_runs_the_paper_protocol_under_jax_without_tensorflow(tmp_path):
    patches, index, manifest = tiny_split(n=16)
    export = export_patches(tmp_path / "tiny.npz", patches, index, manifest, {"data_version": "synthetic"})
    out = tmp_path / "results.json"
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_TENSORFLOW, str(REPO / "bench" / "train_gpu.py"), "--patches", str(export),
         "--epochs", "2", "--throughput", "8", "--throughput-steps", "1", "--inference-batches", "1", "4",
         "--repeats", "1", "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(out.read_text())
    assert results["setup"]["device"].startswith("jax") and results["setup"]["precision"] == "mixed_bfloat16"
    assert results["setup"]["lesions"] == {"train": 8, "val": 4, "test": 4}
    protocol = results["paper_protocol"]
    assert protocol["epochs_run"] == 2 and protocol["wall_s"] > protocol["first_epoch_s"] > 0
    assert set(protocol["test_metrics"]) >= {"accuracy", "roc_auc", "specificity"}
    assert set(results["inference"]) == {"batch_1", "batch_4"}
    assert results["training_images_per_s"]["batch_8"] > 0


def test_on_jax_the_augmented_train_step_is_compiled_not_eager():
    """Keras's RandomRotation/RandomTranslation say supports_jit=False (a TensorFlow limitation),
    which made Keras run the whole JAX train step op by op; on JAX they are marked jit-able."""
    script = (
        "import keras\n"
        "from liverlesion.model import build_model\n"
        "from liverlesion.training import compile_for_training, paper_protocol, training_model\n"
        "model = build_model((75, 75, 3))\n"
        "trainable = compile_for_training(training_model(model, paper_protocol()), paper_protocol())\n"
        "print(keras.backend.backend(), trainable.jit_compile)\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "jax True"
