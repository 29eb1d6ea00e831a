"""Test accuracy against pipeline minutes: the default job's model under several training options.

Each option is one ``liverlesion run --profile quick --set ...`` as a user would type it, all in one
throw-away state folder (the project's registry is not touched), so the data steps run once and are
cached for the later options. For each option it prints the test metrics of the model the run
trained (read from its MLflow run), the kept epoch, and the pipeline seconds: the data steps of the
uncached first run plus this run's train, evaluate and register steps.

With ``--seeds`` each option is trained once per seed (``train.seed``), to show how much of a
difference between options is the luck of one initialisation on a 46-lesion test split.

Usage: python bench/quick_model_options.py [--only NAME ...] [--seeds 2019 1 2] [--keep-state DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

#: name -> --set overrides on top of the quick profile (as it is in configs/quick.yaml)
OPTIONS: dict[str, list[str]] = {
    "quick as configured": [],
    "12 ep, val_accuracy, first tie (before)": [
        "train.epochs=12",
        "train.monitor=val_accuracy",
        "train.tie_break=first",
        "train.lr_schedule=constant",
        "train.augment=false",
    ],
    "12 ep, val_loss, last tie": [
        "train.epochs=12",
        "train.monitor=val_loss",
        "train.tie_break=last",
        "train.lr_schedule=constant",
        "train.augment=false",
    ],
    "12 ep, val_loss, cosine": [
        "train.epochs=12",
        "train.monitor=val_loss",
        "train.tie_break=last",
        "train.lr_schedule=cosine",
        "train.augment=false",
    ],
    "24 ep, val_loss, cosine": [
        "train.epochs=24",
        "train.monitor=val_loss",
        "train.tie_break=last",
        "train.lr_schedule=cosine",
        "train.augment=false",
    ],
    "12 ep, val_loss, cosine, augment": [
        "train.epochs=12",
        "train.monitor=val_loss",
        "train.tie_break=last",
        "train.lr_schedule=cosine",
        "train.augment=true",
        "train.rotation_deg=30",
        "train.shift_px=10",
        "train.flips=true",
    ],
    "16 ep, val_loss, cosine, augment": [
        "train.epochs=16",
        "train.monitor=val_loss",
        "train.tie_break=last",
        "train.lr_schedule=cosine",
        "train.augment=true",
        "train.rotation_deg=30",
        "train.shift_px=10",
        "train.flips=true",
    ],
    "24 ep, val_loss, cosine, augment": [
        "train.epochs=24",
        "train.monitor=val_loss",
        "train.tie_break=last",
        "train.lr_schedule=cosine",
        "train.augment=true",
        "train.rotation_deg=30",
        "train.shift_px=10",
        "train.flips=true",
    ],
    "32 ep, val_loss, cosine, augment": [
        "train.epochs=32",
        "train.monitor=val_loss",
        "train.tie_break=last",
        "train.lr_schedule=cosine",
        "train.augment=true",
        "train.rotation_deg=30",
        "train.shift_px=10",
        "train.flips=true",
    ],
    "24 ep, val_accuracy, cosine, augment": [
        "train.epochs=24",
        "train.monitor=val_accuracy",
        "train.tie_break=last",
        "train.lr_schedule=cosine",
        "train.augment=true",
        "train.rotation_deg=30",
        "train.shift_px=10",
        "train.flips=true",
    ],
}
DATA_STEPS = ("ingest", "segment", "extract_patches", "validate", "split")
MODEL_STEPS = ("train", "evaluate", "register")
METRICS = ("accuracy", "roc_auc", "recall", "specificity")

_QUERY = """
import json, mlflow
from zenml.client import Client
run = Client().get_pipeline('training_pipeline').last_run
steps = {n: (s.end_time - s.start_time).total_seconds() for n, s in run.steps.items()}
found = mlflow.search_runs(search_all_experiments=True, filter_string="metrics.best_epoch >= 0",
                           order_by=["start_time DESC"], max_results=1, output_format="list")
metrics = found[0].data.metrics
print(json.dumps({'steps': steps, 'cached': [n for n, s in run.steps.items() if s.status.value == 'cached'],
                  'metrics': {k: v for k, v in metrics.items() if k.startswith('test_') or k.startswith('best_')}}))
"""


def run_option(cli: Path, env: dict[str, str], query_env: dict[str, str], overrides: list[str]) -> dict:
    command = [str(cli), "run", "--profile", "quick"] + [arg for o in overrides for arg in ("--set", o)]
    done = subprocess.run(command, env=env, text=True, capture_output=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode})")
    query = subprocess.run([sys.executable, "-c", _QUERY], env=query_env, text=True, capture_output=True, check=True)
    return json.loads(query.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="option names to run (default: all)")
    parser.add_argument(
        "--seeds", type=int, nargs="*", default=[], help="train each option with these seeds (default: the profile's)"
    )
    parser.add_argument("--keep-state", type=Path, help="state folder to use (default: a temporary one)")
    args = parser.parse_args()
    state = args.keep_state or Path(tempfile.mkdtemp(prefix="liverlesion-bench-options-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_", "MLFLOW_"))}
    env["LIVERLESION_HOME"] = str(state)
    query_env = {
        **env,
        "ZENML_CONFIG_PATH": str(state / "zenml"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{state / 'mlflow' / 'mlflow.db'}",
    }
    cli = Path(sys.executable).with_name("liverlesion")
    names = args.only or list(OPTIONS)
    data_seconds = None
    print(
        f"# quick profile options, {os.cpu_count()} CPU cores; pipeline s = data steps (uncached) + train, "
        "evaluate, register"
    )
    header = f"{'option':<42} {'seed':>5} {'kept':>4} {'train s':>7} {'pipeline s':>10} " + " ".join(
        f"{m:>11}" for m in METRICS
    )
    print(header)
    for name, seed in [(n, s) for n in names for s in (args.seeds or [None])]:
        found = run_option(cli, env, query_env, OPTIONS[name] + ([f"train.seed={seed}"] if seed is not None else []))
        steps = found["steps"]
        if data_seconds is None:
            if found["cached"]:
                raise SystemExit("the first option found cached data steps: give a fresh --keep-state")
            data_seconds = sum(steps[s] for s in DATA_STEPS)
        pipeline = data_seconds + sum(steps[s] for s in MODEL_STEPS)
        m = found["metrics"]
        print(
            f"{name:<42} {seed if seed is not None else '-':>5} {int(m.get('best_epoch', -1)) + 1:>4} "
            f"{steps['train']:>7.0f} {pipeline:>10.0f} "
            + " ".join(f"{m.get('test_' + k, float('nan')):>11.3f}" for k in METRICS),
            flush=True,
        )


if __name__ == "__main__":
    main()
