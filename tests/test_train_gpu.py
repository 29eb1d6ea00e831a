"""The standalone GPU entry point on CPU, under Keras's JAX and torch backends, without TensorFlow.

TensorFlow, ZenML and MLflow are made unimportable in the child process, as on the GPU machines
(Keras + JAX, or PyTorch): a hidden dependency on them fails here rather than there. JAX is a
locked test dependency. torch is not (uv would fetch a CUDA build of several GB), so its case runs
only where torch is installed (a CPU build: ``pip install torch --index-url https://download.pytorch.org/whl/cpu``).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from liverlesion.config import load_profile
from liverlesion.patchset import export_patches
from tests.profiles import CONFIGS
from tests.support import FAST_XLA_COMPILE, backend_or_skip, tiny_split, without

REPO = Path(__file__).resolve().parents[1]
#: what the GPU machines lack (the other Keras backend is blocked as well, so each run uses only its own)
BLOCKED = ("tensorflow", "zenml", "mlflow")
OTHER_BACKEND = {"jax": "torch", "torch": "jax"}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_train_gpu_runs_the_paper_protocol_without_tensorflow(tmp_path, backend):
    backend_or_skip(backend)
    patches, index, manifest = tiny_split(n=16)
    paper = load_profile("paper", CONFIGS)  # what `liverlesion export --profile paper` writes with the patches
    export = export_patches(
        tmp_path / "tiny.npz",
        patches,
        index,
        manifest,
        {
            "data_version": "synthetic",
            "profile": "paper",
            "train": paper.train.model_dump(mode="json"),
            "threshold": paper.evaluate.threshold,
        },
    )
    out = tmp_path / "results.json"
    blocked = without(tmp_path, BLOCKED + (OTHER_BACKEND[backend],))
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "JAX_PLATFORMS": "cpu",
        "CUDA_VISIBLE_DEVICES": "",
        **(FAST_XLA_COMPILE if backend == "jax" else {}),
        "PYTHONPATH": os.pathsep.join([str(blocked), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    for name in BLOCKED + (OTHER_BACKEND[backend],):  # the blocking itself works
        probe = subprocess.run([sys.executable, "-c", f"import {name}"], env=env, capture_output=True, text=True)
        assert "is not on the GPU machine" in probe.stderr, name
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "train_gpu.py"),
            "--patches",
            str(export),
            "--epochs",
            "2",
            "--precision",
            "mixed_bfloat16",
            "--throughput",
            "8",
            "--throughput-without-augmentation",
            "8",
            "--throughput-steps",
            "1",
            "--inference-batches",
            "1",
            "4",
            "--repeats",
            "1",
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(out.read_text())
    assert results["setup"]["device"].startswith(backend) and results["setup"]["precision"] == "mixed_bfloat16"
    assert results["setup"]["lesions"] == {"train": 8, "val": 4, "test": 4}
    # the exported paper settings, not a copy of them in the bench (--epochs overrides one)
    assert results["setup"]["protocol"] == {**paper.train.protocol().__dict__, "epochs": 2, "full_batches": True}
    protocol = results["protocol"]
    assert protocol["epochs_run"] == 2 and protocol["wall_s"] > protocol["first_epoch_s"] > 0
    assert set(protocol["test_metrics"]) >= {"accuracy", "roc_auc", "specificity"}
    assert set(results["inference"]) == {"batch_1", "batch_4"}
    assert set(results["training_images_per_s"]) == {"batch_8", "batch_8_without_augmentation"}
    assert min(results["training_images_per_s"].values()) > 0


def test_on_jax_the_augmented_train_step_is_compiled_not_eager():
    """Keras's RandomRotation/RandomTranslation say supports_jit=False (a TensorFlow limitation),
    which made Keras run the whole JAX train step op by op; on JAX they are marked jit-able."""
    backend_or_skip("jax")
    script = (
        "import keras\n"
        "from liverlesion.model import build_model\n"
        "from liverlesion.training import compile_for_training, training_model\n"
        "from tests.profiles import profile\n"
        "t = profile('paper').train  # augmented, a constant rate\n"
        "model = build_model((75, 75, 3), t.backbone, None, t.dense_units, t.dropout, t.bn_momentum)\n"
        "trainable = compile_for_training(training_model(model, t.protocol()), t.protocol())\n"
        "print(keras.backend.backend(), trainable.jit_compile)\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "jax True"
