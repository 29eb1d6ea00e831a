"""Table 2 from each segmentation method, side by side, and the segmentation table beside it.

Runs the training DAG once per method (``liverlesion run --set segment.method=<method>``, and for
``learned`` first ``liverlesion train-segmenter`` unless a champion cascade exists) in this project,
then reads the runs back from MLflow and prints two tables: the test metrics of the classifier with
each method's lesions (same test patients), with the reference lesions each method missed and the
lesions it invented; and the segmentation measures on the test patients.
Usage: python bench/segment_methods.py [--profile quick] [--methods reference,classical,learned] [--retrain-segmenter]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

METRICS = ("accuracy", "balanced_accuracy", "f1", "roc_auc", "precision", "recall", "specificity")
SEGMENTATION = (
    "liver_dice",
    "liver_assd_mm",
    "lesion_dice",
    "lesion_assd_mm",
    "detection_recall",
    "detection_recall_metastasis",
    "detection_recall_cyst",
    "false_positives_per_patient",
    "seconds_per_case",
)


def liverlesion(*args: str) -> float:
    started = time.perf_counter()
    command = [str(Path(sys.executable).with_name("liverlesion")), *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--methods", default="reference,classical,learned")
    parser.add_argument("--retrain-segmenter", action="store_true", help="train a new cascade even if one is champion")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]

    from liverlesion.config import load_profile
    from liverlesion_ops import project
    from liverlesion_ops.environment import configure_environment
    from liverlesion_ops.registry.store import RegistryError, registry_client
    from liverlesion_ops.segmenters import resolve_segmenter

    configure_environment()
    profile = load_profile(args.profile, project.configs_dir())
    seconds = {}
    if "learned" in methods:
        try:
            resolve_segmenter(profile.segment.learned_model)
            have = not args.retrain_segmenter
        except RegistryError:
            have = False
        if not have:
            seconds["train-segmenter"] = liverlesion("train-segmenter", "--profile", args.profile)
    for method in methods:
        seconds[method] = liverlesion("run", "--profile", args.profile, "--set", f"segment.method={method}")

    mlflow = registry_client()
    experiment = mlflow.get_experiment_by_name(profile.register.experiment)
    rows = {}
    for method in methods:
        [run] = mlflow.search_runs(
            [experiment.experiment_id],
            f"params.segment_method = '{method}' and tags.profile = '{profile.name}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        rows[method] = run.data.metrics
    print(f"# profile {profile.name}; wall seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    print("\n## Classification (test patients; the lesions each method found)\n")
    print(
        "| segment | " + " | ".join(METRICS) + " | lesions scored | metastases missed | cysts missed | invented | "
        "end-to-end sensitivity |"
    )
    print("| --- " * (len(METRICS) + 6) + "|")
    for method, m in rows.items():
        missed = [m.get(f"end_to_end_missed_{c}") for c in ("metastasis", "cyst")]
        cells = [f"{m[f'test_{k}']:.3f}" for k in METRICS]
        extra = ["0" if v is None else f"{v:.0f}" for v in missed]
        invented = m.get("end_to_end_invented")
        recall = m.get("end_to_end_recall", m["test_recall"])  # reference: nothing missed
        print(
            f"| {method} | "
            + " | ".join(cells)
            + f" | {m['test_lesions_scored']:.0f} | "
            + " | ".join(extra)
            + f" | {0 if invented is None else invented:.0f} | {recall:.3f} |"
        )
    print("\n## Segmentation (test patients)\n")
    print("| segment | " + " | ".join(SEGMENTATION) + " |")
    print("| --- " * (len(SEGMENTATION) + 1) + "|")
    for method, m in rows.items():
        if method == "reference":
            continue
        print(f"| {method} | " + " | ".join(f"{m.get(f'seg_test_{k}', float('nan')):.3f}" for k in SEGMENTATION) + " |")


if __name__ == "__main__":
    main()
