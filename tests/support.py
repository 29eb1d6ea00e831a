"""Helpers several test modules share (a test module imports no other test module)."""

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

#: For the tests that train on Keras's JAX backend on the CPU: XLA's CPU compiler at its lowest optimisation. They
#: check what runs (the backend, the precision, the files and fields written), never how fast or to which digits; the
#: compiling took most of their time (the GPU bench's test 137 -> 94 s alone on 2 cores). Only these tests: TensorFlow
#: reads XLA_FLAGS too, and the others train and score as the product does.
FAST_XLA_COMPILE = {"XLA_FLAGS": "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"}


def without(tmp_path: Path, modules: tuple[str, ...]) -> Path:
    """A folder of stand-in packages that raise ImportError when imported, to put first on PYTHONPATH.

    Unlike an import hook that raises from ``find_spec``, this leaves probing alone: torch asks
    ``importlib.util.find_spec("tensorflow")`` while importing and only an ``import`` must fail.
    """
    folder = tmp_path / "blocked"
    for name in modules:
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "__init__.py").write_text(f"raise ImportError('{name} is not on the GPU machine')\n")
    return folder


def backend_or_skip(backend: str) -> None:
    if importlib.util.find_spec(backend) is None:
        reason = (
            "JAX is a test dependency (requirements.lock); install it"
            if backend == "jax"
            else "torch is not a locked dependency (a CUDA build of several GB); install a CPU build"
        )
        pytest.skip(f"{reason} to test bench/train_gpu.py under KERAS_BACKEND={backend}")


def tiny_split(n: int = 12, shape=(75, 75, 3)):
    """Random patches of ``n`` lesions of ``n / 2`` patients, split train / val / test, rows out of id order."""
    rng = np.random.default_rng(0)
    patches = rng.normal(size=(n, *shape)).astype("float32")
    index = pd.DataFrame({"lesion_id": [f"L{i:02d}" for i in range(n)], "row": np.arange(n)[::-1]})
    patches = patches[::-1].copy()  # rows in another order than lesion ids: the index is followed
    manifest = pd.DataFrame(
        {
            "lesion_id": [f"L{i:02d}" for i in range(n)],
            "patient_key": [f"P{i // 2}" for i in range(n)],
            "label": [i % 2 for i in range(n)],
            "set": ["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4),
        }
    )
    return patches, index, manifest
