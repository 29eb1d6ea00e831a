"""Figures: a smoke run's training traced into a graph against run op by op (``train.run_eagerly``).

The tests' ``tiny`` profile trains the paper's network (InceptionV3 + FC head, 75x75 patches) for a few steps:
20 training and 7 validation lesions, batch 8, augmented, as its cohort gives them. Each way is timed in a process
of its own (a cold Keras, as a pipeline's train step has), building the network and fitting it through
``liverlesion.training.train_classifier``; alternating, ``--repeats`` times each, and the medians printed.
Usage: python bench/eager_training.py [--epochs 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

_CHILD = """
import json, sys, time
import numpy as np
from liverlesion.model import build_model
from liverlesion.protocol import Protocol
from liverlesion.training import train_classifier
eager, epochs = sys.argv[1] == "eager", int(sys.argv[2])
protocol = Protocol(epochs=epochs, batch_size=8, learning_rate=1e-3, lr_patience=None, lr_factor=0.5, min_lr=1e-10,
                    early_stopping_patience=None, augment=True, rotation_deg=30.0, shift_px=4, flips=True,
                    label_smoothing=0.0, seed=7, monitor="val_loss", tie_break="last", lr_schedule="constant",
                    full_batches=False, run_eagerly=eager)
rng = np.random.default_rng(0)
x, y = rng.normal(size=(20, 75, 75, 3)).astype("float32"), rng.integers(0, 2, 20)
xv, yv = rng.normal(size=(7, 75, 75, 3)).astype("float32"), rng.integers(0, 2, 7)
started = time.perf_counter()
model = build_model((75, 75, 3), "inception_v3", None, 512, 0.4, 0.9)
built = time.perf_counter()
train_classifier(model, x, y, xv, yv, protocol, verbose=0)
print(json.dumps({"build_s": built - started, "fit_s": time.perf_counter() - built}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2, help="the tiny profile's")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    fits: dict[str, list[float]] = {"traced": [], "eager": []}
    for _ in range(args.repeats):
        for way in fits:
            done = subprocess.run(
                [sys.executable, "-c", _CHILD, way, str(args.epochs)], env=env, capture_output=True, text=True
            )
            if done.returncode:
                raise SystemExit(done.stderr[-3000:])
            fits[way].append(json.loads(done.stdout.strip().splitlines()[-1])["fit_s"])
    print(f"# {args.epochs} epochs of 3 steps (20 lesions, batch 8) + validation, {os.cpu_count()} CPUs")
    print("way      fit_s (median)  runs")
    for way, times in fits.items():
        print(f"{way:8} {statistics.median(times):14.1f}  {', '.join(f'{t:.1f}' for t in times)}")
    print(f"eager is {statistics.median(fits['traced']) / statistics.median(fits['eager']):.1f}x faster")


if __name__ == "__main__":
    main()
