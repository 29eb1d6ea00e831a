"""The proposed model under the paper's protocol, standalone: Keras 3 on any backend, no TensorFlow/ZenML.

Reads the patches the pipeline exported (``liverlesion export --profile paper``), trains InceptionV3
+ FC-512/Dropout-0.4 x2 with the training settings exported with them (the profile's ``train``
section: for ``paper``, Adam 1e-3, LR halved after 10 flat epochs down to 1e-10, early stopping
after 50 with the best weights restored, at most 103 epochs of batch 8, rotation/shift/flip
augmentation) in the profile's precision (``auto``: mixed bfloat16 on a GPU), the same protocol
the pipeline's ``train`` step runs, and prints and writes what it measured:

- the whole protocol's wall time, compilation included, and the first epoch's time;
- training images/s at batch 8 inside that run (epochs after the first, validation included);
- the test metrics of the trained model;
- inference ms per lesion at batch 1 and lesions/s batched;
- training images/s at other batch sizes (a fresh model: one warm-up epoch, then one timed epoch),
  and optionally without augmentation, to see what augmenting costs.

Meant for a GPU machine with Keras + JAX only::

    KERAS_BACKEND=jax JAX_COMPILATION_CACHE_DIR=/var/cache/jax \\
        PYTHONPATH=src python bench/train_gpu.py --patches paper-patches.npz --out results.json

``JAX_COMPILATION_CACHE_DIR`` keeps XLA's compiled programs (tens of MB) between runs, so a
scheduled retraining on the same machine skips most of the compilation. Without ImageNet weights on
the machine the network starts from random weights (NPW); give ``--weights`` a weights file for IPW.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a bare checkout

import keras  # noqa: E402
import numpy as np  # noqa: E402

from liverlesion.config import TrainConfig  # noqa: E402
from liverlesion.metrics import classification_metrics  # noqa: E402
from liverlesion.model import build_model  # noqa: E402
from liverlesion.patchset import load_patch_set  # noqa: E402
from liverlesion.protocol import Protocol, resolve_training_precision  # noqa: E402
from liverlesion.training import (  # noqa: E402
    accelerator,
    best_epoch,
    compile_for_training,
    device_description,
    predict_metastasis_probability,
    seed_everything,
    train_classifier,
    training_model,
)


class Results:
    """A JSON file rewritten after each phase, so a run cut short still leaves its figures."""

    def __init__(self, path: Path | None):
        self.path = path
        self.data: dict = {}

    def add(self, key: str, value) -> None:
        self.data[key] = value
        print(f"[train_gpu] {key}: {json.dumps(value)}", flush=True)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.data, indent=2))


class EpochClock(keras.callbacks.Callback):
    """Wall time of each epoch, and of the validation inside it (fit calls on_test_* for it)."""

    def __init__(self, every: int):
        super().__init__()
        self.every, self.times, self.validation, self.started, self.val_started = every, [], [], None, None

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_test_begin(self, logs=None):
        self.val_started = time.perf_counter()

    def on_test_end(self, logs=None):
        self.validation.append(time.perf_counter() - self.val_started)

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.started)
        if self.every and (epoch % self.every == 0):
            logs = logs or {}
            print(
                f"  epoch {epoch + 1}: {self.times[-1]:.2f}s loss {logs.get('loss', float('nan')):.3f} "
                f"val_accuracy {logs.get('val_accuracy', float('nan')):.3f}",
                flush=True,
            )


def network(settings: TrainConfig, shape: tuple[int, ...], weights: str | None) -> keras.Model:
    """The exported settings' network (backbone, head, batch-norm momentum), from ``weights`` (None: NPW)."""
    return build_model(
        shape,
        backbone=settings.backbone,
        weights=weights,
        dense_units=settings.dense_units,
        dropout=settings.dropout,
        bn_momentum=settings.bn_momentum,
    )


def training_throughput(
    x: np.ndarray,
    y: np.ndarray,
    settings: TrainConfig,
    base: Protocol,
    batch: int,
    steps: int,
    precision_policy: str,
    augment: bool = True,
) -> float:
    """Training images/s at ``batch`` (with the protocol's augmentation unless ``augment`` is off): one
    warm-up epoch, then one timed epoch."""
    keras.mixed_precision.set_dtype_policy(precision_policy)
    seed_everything(base.seed, deterministic=False)
    model = network(settings, x.shape[1:], None)
    protocol = dataclasses.replace(base, batch_size=batch, augment=augment and base.augment)
    trainable = compile_for_training(training_model(model, protocol), protocol, steps_per_epoch=steps)
    reps = int(np.ceil(batch * steps / len(x)))
    xs = np.concatenate([x] * reps)[: batch * steps]
    ys = keras.utils.to_categorical(np.concatenate([y] * reps)[: batch * steps], 2)
    clock = EpochClock(every=0)
    trainable.fit(xs, ys, batch_size=batch, epochs=2, shuffle=False, verbose=0, callbacks=[clock])
    return batch * steps / clock.times[1]


def inference(model: keras.Model, x: np.ndarray, batches: list[int], repeats: int) -> dict:
    out = {}
    for batch in batches:
        xb = np.resize(x, (batch, *x.shape[1:])).astype("float32")
        model.predict_on_batch(xb)  # compile
        model.predict_on_batch(xb)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            np.asarray(model.predict_on_batch(xb))
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        out[f"batch_{batch}"] = {
            "ms_per_batch": median * 1e3,
            "ms_per_lesion": median * 1e3 / batch,
            "lesions_per_s": batch / median,
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patches", type=Path, required=True, help=".npz written by `liverlesion export`")
    parser.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    parser.add_argument(
        "--precision",
        default=None,
        choices=["auto", "mixed_bfloat16", "mixed_float16", "float32"],
        help="default: the exported train.precision",
    )
    parser.add_argument("--weights", default=None, help="backbone weights file (IPW); default: none (NPW)")
    parser.add_argument("--epochs", type=int, default=None, help="at most; default: the exported train.epochs")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the exported train.batch_size")
    parser.add_argument("--seed", type=int, default=None, help="default: the exported train.seed")
    parser.add_argument("--skip-protocol", action="store_true", help="only the throughput and inference figures")
    parser.add_argument(
        "--throughput",
        type=int,
        nargs="*",
        default=[64],
        help="other training batch sizes to time (batch 8 is timed inside the protocol run)",
    )
    parser.add_argument(
        "--throughput-without-augmentation",
        type=int,
        nargs="*",
        default=[],
        metavar="BATCH",
        help="batch sizes to time also without augmentation: what augmenting costs per epoch",
    )
    parser.add_argument("--throughput-steps", type=int, default=60)
    parser.add_argument("--inference-batches", type=int, nargs="*", default=[1, 256])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--limit", type=int, default=None, help="use at most this many lesions per set (tests)")
    args = parser.parse_args(argv)

    results = Results(args.out)
    if keras.backend.backend() == "jax" and os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        import jax

        # cache every program, not only those that took over a second to compile: building the
        # model runs hundreds of small eager initialiser programs, each compiled again otherwise
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    data = load_patch_set(args.patches)
    if "train" not in data.meta or "threshold" not in data.meta:
        parser.error(
            f"{args.patches}: the export carries no training settings or threshold; write it with `liverlesion export`"
        )
    settings = TrainConfig(**data.meta["train"])
    changes = {
        k: v
        for k, v in {"epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed}.items()
        if v is not None
    }
    # full batches: one compiled train step on JAX (the step's default is off: a CPU run gains nothing)
    protocol = dataclasses.replace(settings.protocol(), full_batches=True, **changes)
    precision = resolve_training_precision(args.precision or settings.precision, accelerator() is not None)
    sets = {name: data[name] for name in ("train", "val", "test")}
    if args.limit:
        sets = {
            name: type(s)(s.x[: args.limit], s.y[: args.limit], s.lesion_id[: args.limit], s.patient_key[: args.limit])
            for name, s in sets.items()
        }
    results.add(
        "setup",
        {
            "device": device_description(),
            "keras": keras.__version__,
            "precision": precision,
            "protocol": dataclasses.asdict(protocol),
            "profile": data.meta.get("profile"),
            "patch_shape": list(sets["train"].x.shape[1:]),
            "lesions": {k: len(v) for k, v in sets.items()},
            "data_version": data.meta.get("data_version"),
            "split_manifest_hash": data.meta.get("split_manifest_hash"),
            "weights": args.weights or "none (NPW)",
            "compilation_cache": os.environ.get("JAX_COMPILATION_CACHE_DIR") or "off",
        },
    )

    keras.mixed_precision.set_dtype_policy(precision)
    if not args.skip_protocol:
        started = time.perf_counter()
        seed_everything(protocol.seed, deterministic=False)
        model = network(settings, sets["train"].x.shape[1:], args.weights)
        built = time.perf_counter() - started
        clock = EpochClock(every=10)
        history = train_classifier(
            model,
            sets["train"].x,
            sets["train"].y,
            sets["val"].x,
            sets["val"].y,
            protocol,
            verbose=0,
            extra_callbacks=[clock],
        )
        wall = time.perf_counter() - started
        # scored at the largest inference batch, so that no extra program is compiled for the test size
        batch = max(args.inference_batches + [1])
        tiled = np.resize(sets["test"].x, (max(batch, len(sets["test"])), *sets["test"].x.shape[1:]))
        probability = predict_metastasis_probability(model, tiled, batch_size=batch)[: len(sets["test"])]
        best = best_epoch(history[protocol.monitor], protocol.mode, protocol.tie_break)
        results.add(
            "protocol",
            {
                "wall_s": wall,
                "build_s": built,
                "first_epoch_s": clock.times[0],
                "later_epoch_median_s": statistics.median(clock.times[1:]) if len(clock.times) > 1 else None,
                "epochs_run": len(clock.times),
                "best_epoch": best + 1,
                "best_val_accuracy": history["val_accuracy"][best],
                # the topped-up training set per epoch over whole epochs, validation included (JAX
                # dispatches asynchronously, so the training part alone cannot be timed from callbacks)
                "train_images_per_s_after_first_epoch_incl_validation": (
                    (len(clock.times) - 1)
                    * (len(sets["train"]) + (-len(sets["train"])) % protocol.batch_size)
                    / sum(clock.times[1:])
                    if len(clock.times) > 1
                    else None
                ),
                "validation_s_median": statistics.median(clock.validation) if clock.validation else None,
                "test_metrics": classification_metrics(sets["test"].y, probability, data.meta["threshold"]),
            },
        )
        results.add("inference", inference(model, sets["test"].x, args.inference_batches, args.repeats))
    else:
        model = network(settings, sets["train"].x.shape[1:], args.weights)
        results.add("inference", inference(model, sets["test"].x, args.inference_batches, args.repeats))

    throughput = {}
    runs = [(batch, True) for batch in args.throughput] + [
        (batch, False) for batch in args.throughput_without_augmentation
    ]
    for batch, augment in runs:
        throughput[f"batch_{batch}" if augment else f"batch_{batch}_without_augmentation"] = training_throughput(
            sets["train"].x, sets["train"].y, settings, protocol, batch, args.throughput_steps, precision, augment
        )
        results.add("training_images_per_s", throughput)
    return results.data


if __name__ == "__main__":
    main()
