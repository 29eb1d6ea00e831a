"""What the integration tests share: a throw-away project (git + DVC + configs) and the console command."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TINY_PROFILE = {
    "extends": "quick",
    "name": "tiny",
    "cohort": {"seed": 7, "n_patients": 12, "n_lesions": 36, "size_scale": 0.5},
    "patches": {"output_size": [75, 75]},
    # a smoke run of 6 steps, for which tracing the train step into a graph would cost more than the training;
    # two epochs, not one: after one the network answered 0.5 +- 0.0003 for every lesion, which no calibration
    # can move (and the tests check that the calibration does)
    "train": {"epochs": 2, "batch_size": 8, "run_eagerly": True},
    # carried into the served model: the tests check that every answer uses them
    "evaluate": {"calibration": "temperature", "operating_point": {"metric": "recall", "at_least": 0.9}},
    # two epochs on 12 patients: no floors, so that the first version becomes champion
    "register": {"model_name": "tiny-liver-lesion", "gate": {"floors": {"recall": 0.0, "specificity": 0.0}}},
}


def cli(project: Path, env: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("liverlesion")), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"liverlesion {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
        )
    return done


def make_project(root: Path) -> tuple[Path, dict]:
    """A project folder as a user's checkout would be: configs (with ``tiny``), git, DVC, ``data.dvc``;
    and an environment that points every piece of state into it."""
    shutil.copytree(REPO / "configs", root / "configs")
    (root / "configs" / "tiny.yaml").write_text(yaml.safe_dump(TINY_PROFILE))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_", "MLFLOW_", "LIVERLESION_"))}
    env.update(
        {
            "LIVERLESION_PROJECT": str(root),
            "LIVERLESION_HOME": str(root / "state"),
            "CUDA_VISIBLE_DEVICES": "",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
    )
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(command, cwd=root, check=True)
    (root / "data.dvc").write_text("")  # marks the project root; filled by `dvc add`
    return root, env


def mlflow_client(root):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'state' / 'mlflow' / 'mlflow.db'}"
    return MlflowClient(uri, uri)
