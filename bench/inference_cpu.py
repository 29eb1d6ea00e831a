"""CPU inference of the paper's network: the trained float32 network against the fast paths, side by side.

Variants (``liverlesion.precision``): ``float32`` (as trained), ``float32+fold`` (batch norm folded
into the convolutions), ``mixed_bfloat16`` (Keras mixed precision) and ``bfloat16+fold`` (BN folded,
bfloat16 weights and compute: the fast path, ``inference_model(model, "bfloat16")``).

1. Speed, random weights (timing does not depend on them): ms per batch and per lesion at batch 1
   (one lesion) and at the batch sizes of a CT's lesions scored together, for each input size, all
   variants in one process, interleaved, with the ratio to float32.
2. Agreement on real data (``--agreement``): the model of the latest training run and its test
   split, read from the ZenML store of this project, scored as trained and by the fast path; prints
   the largest probability difference, how many lesions change class, and each metric in both.

Usage: python bench/inference_cpu.py [--sizes 96x80 252x210] [--batches 1 4 8] [--repeats 20] [--agreement]
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
from liverlesion.precision import fold_batch_norm, inference_model, resolve_precision, with_precision  # noqa: E402

VARIANTS = {
    "float32": lambda m: m,
    "float32+fold": fold_batch_norm,
    "mixed_bfloat16": lambda m: with_precision(m, "mixed_bfloat16"),
    "bfloat16+fold": lambda m: inference_model(m, "bfloat16"),
}


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


def speed(sizes: list[str], batches: list[int], repeats: int) -> None:
    print(
        f"# CPU inference, Keras {keras.__version__} on {keras.backend.backend()}, {os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}, random weights"
    )
    print(f"# evaluate.precision auto here: {' '.join(resolve_precision('auto'))}")
    print(
        f"{'input':>9} {'batch':>5} {'variant':>15} {'ms/batch':>9} {'ms/lesion':>10} {'lesions/s':>10} "
        f"{'vs float32':>10}"
    )
    for size in sizes:
        rows, cols = (int(v) for v in size.split("x"))
        base = build_model((rows, cols, 3), "inception_v3", None, 512, 0.4, None)  # the paper's network
        models = {name: make(base) for name, make in VARIANTS.items()}
        for batch in batches:
            n = max(3, repeats // (1 if batch == 1 else 4))
            times: dict[str, list[float]] = {name: [] for name in models}
            for model in models.values():  # warm both first
                time_batches(model, batch, 1)
            for _ in range(n):  # interleaved, so that machine noise hits both alike
                for precision, model in models.items():
                    times[precision].extend(time_batches(model, batch, 1))
            reference = statistics.median(times["float32"])
            for precision in models:
                median = statistics.median(times[precision])
                print(
                    f"{size:>9} {batch:>5} {precision:>15} {median * 1e3:>9.1f} {median * 1e3 / batch:>10.2f} "
                    f"{batch / median:>10.1f} {median / reference:>10.2f}",
                    flush=True,
                )


def agreement() -> None:
    """Both precisions on the latest training run's model and test split (project ZenML store)."""
    from liverlesion.metrics import classification_metrics
    from liverlesion.splitting import arrays_for_set
    from liverlesion.training import predict_metastasis_probability
    from liverlesion_ops.environment import configure_environment
    from liverlesion_ops.runs import step_output

    configure_environment()
    from zenml.client import Client

    run = Client().get_pipeline("training_pipeline").last_successful_run

    def output(step: str, name: str):
        return step_output(run, step, name)

    model = output("train", "model")
    x, y, _ = arrays_for_set(
        output("extract_patches", "patches"),
        output("extract_patches", "patch_index"),
        output("split", "split_manifest"),
        "test",
    )
    p = {
        name: predict_metastasis_probability(VARIANTS[name](model), x, batch_size=8)
        for name in ("float32", "bfloat16+fold")
    }
    flips = int(np.sum((p["float32"] >= 0.5) != (p["bfloat16+fold"] >= 0.5)))
    print(f"# agreement on the test split of {run.name} ({len(y)} lesions, input {x.shape[1:3]})")
    print(
        f"max |p_fast - p_f32| = {np.abs(p['float32'] - p['bfloat16+fold']).max():.5f}; "
        f"lesions that change class at 0.5: {flips}"
    )
    scores = {name: classification_metrics(y, prob, threshold=0.5) for name, prob in p.items()}
    print(f"{'metric':>18} {'float32':>9} {'fast':>9} {'difference':>10}")
    for name in scores["float32"]:
        a, b = scores["float32"][name], scores["bfloat16+fold"][name]
        print(f"{name:>18} {a:>9.4f} {b:>9.4f} {b - a:>+10.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["96x80", "252x210"], help="input sizes RxC")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4, 8])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--agreement", action="store_true", help="also compare both precisions on real test data")
    args = parser.parse_args()
    speed(args.sizes, args.batches, args.repeats)
    if args.agreement:
        agreement()


if __name__ == "__main__":
    main()
