"""CPU inference of the paper's network: ms per lesion at batch 1 and batch 32.

Weights are random (timing does not depend on them). Prints one line per (input size, batch).
Usage: python bench/inference_cpu.py [--sizes 96x80 252x210] [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from liverlesion.model import build_model  # noqa: E402


def time_batches(model, batch: int, repeats: int) -> list[float]:
    x = np.random.default_rng(0).normal(size=(batch, *model.input_shape[1:])).astype("float32")
    model.predict_on_batch(x)  # trace / warm up
    model.predict_on_batch(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict_on_batch(x)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="+", default=["96x80", "252x210"], help="input sizes RxC")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"# CPU inference, Keras {keras.__version__} on {keras.backend.backend()}, {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}, float32, random weights")
    print(f"{'input':>9} {'batch':>5} {'ms/batch (median)':>18} {'ms/lesion':>10} {'lesions/s':>10}")
    for size in args.sizes:
        rows, cols = (int(v) for v in size.split("x"))
        model = build_model((rows, cols, 3))
        for batch in args.batches:
            median = statistics.median(time_batches(model, batch, max(3, args.repeats // (1 if batch == 1 else 4))))
            print(f"{size:>9} {batch:>5} {median * 1000:>18.1f} {median * 1000 / batch:>10.2f} {batch / median:>10.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
