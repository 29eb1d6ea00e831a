"""Training speed on this CPU: float32 against Keras's mixed bfloat16, the quick profile's network and batch.

These CPUs have bfloat16 units (AMX), which make scoring faster (``bench/inference_cpu.py``); this
asks whether training gains too. Each precision is timed in its own process (the dtype policy is
global): a first epoch (tracing included), then the median of two later epochs, on random patches
the size of the default split's training set.
Usage: python bench/train_precision_cpu.py [--lesions 144] [--canvas 96 80]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

_CHILD = """
import json, statistics, sys, time
import keras, numpy as np
from liverlesion.model import build_model
policy, n, rows, cols = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
keras.mixed_precision.set_dtype_policy(policy)
keras.utils.set_random_seed(1)
model = build_model((rows, cols, 3), "inception_v3", None, 512, 0.4, 0.9)  # the paper's network, quick's momentum
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
x = np.random.default_rng(0).random((n, rows, cols, 3), dtype=np.float32)
y = keras.utils.to_categorical(np.random.default_rng(1).integers(0, 2, n), 2)
times = []
for _ in range(3):
    start = time.perf_counter()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    times.append(time.perf_counter() - start)
print(json.dumps({"first": times[0], "later": statistics.median(times[1:])}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lesions", type=int, default=144)
    parser.add_argument("--canvas", type=int, nargs=2, default=[96, 80])
    args = parser.parse_args()
    results = {}
    for policy in ("float32", "mixed_bfloat16"):
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, policy, str(args.lesions), *map(str, args.canvas)],
            capture_output=True,
            text=True,
            check=True,
        )
        results[policy] = json.loads(done.stdout.strip().splitlines()[-1])
    steps = -(-args.lesions // 8)
    print(
        f"# training InceptionV3 + head at batch 8, {args.lesions} patches of {args.canvas[0]}x{args.canvas[1]}, "
        f"{os.cpu_count()} CPU cores"
    )
    print(f"{'precision':<16} {'first epoch s':>14} {'later epoch s':>14} {'s per step':>11}")
    for policy, r in results.items():
        print(f"{policy:<16} {r['first']:>14.1f} {r['later']:>14.2f} {r['later'] / steps:>11.3f}")
    ratio = results["float32"]["later"] / results["mixed_bfloat16"]["later"]
    print(f"mixed bfloat16 speed-up on later epochs: {ratio:.2f}x")


if __name__ == "__main__":
    main()
