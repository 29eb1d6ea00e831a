"""The CPU fast path for scoring lesions: batch normalisation folded into the convolutions, bfloat16.

A trained network is stored and registered as it was trained (float32). For scoring, two exact or
near-exact rewrites make it cheaper on CPUs with bfloat16 units (AMX, AVX512-BF16):

- **BN folding.** In inference, BatchNormalization after a convolution is an affine map per output
  channel, so it can be merged into the convolution's kernel and bias: ``W' = W * s`` and
  ``b' = (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``. Keras 3 runs BN as separate
  element-wise operations, one pass over every activation map; folding removes all of them.
- **bfloat16.** Weights and activations in bfloat16 (weights converted once, not cast on every call
  as ``mixed_bfloat16`` does); the softmax stays float32 so probabilities are not rounded to 8 bits.

``bench/inference_cpu.py --agreement`` measures speed and the difference on the test split.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import keras
import numpy as np

#: ``float32``: the trained network as it is. ``bfloat16``: BN folded, bfloat16 compute and weights.
#: ``mixed_bfloat16``: bfloat16 compute with float32 weights (Keras's mixed precision), for comparison.
PRECISIONS = ("float32", "bfloat16", "mixed_bfloat16")

#: CPU flags that mean native bfloat16 arithmetic: x86 ``flags`` (AMX, AVX512-BF16), Arm ``Features``.
BFLOAT16_CPU_FLAGS = {"flags": ("amx_bf16", "avx512_bf16"), "Features": ("bf16",)}


@keras.saving.register_keras_serializable(package="liverlesion")
class FoldedBatchNormalization(keras.layers.Layer):
    """Stands where a BatchNormalization was folded into the convolution before it: passes through."""

    def call(self, inputs, training=None, mask=None):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


def _producer(layer: keras.layers.Layer):
    history = getattr(layer.input, "_keras_history", None)
    return history[0] if history else None


def fold_batch_norm(model: keras.Model, precision: str | None = None) -> keras.Model:
    """A copy of ``model`` with every Conv2D -> BatchNormalization pair merged into one Conv2D.

    Only a BN whose input is a Conv2D used by nothing else is folded (true of every BN in the
    Inception backbones); any other layer is copied as it is. Inference outputs are unchanged up to
    float rounding; training-mode behaviour is not kept (the copy is for scoring only). With
    ``precision``, the copy also computes in it (as ``with_precision`` would, in the same one copy: the
    network is cloned once, not twice, when ``predict`` loads it).
    """
    consumers: dict[str, int] = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for tensor in node.input_tensors:
                consumers[tensor._keras_history[0].name] = consumers.get(tensor._keras_history[0].name, 0) + 1
    pairs = {}  # conv name -> bn layer
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            conv = _producer(layer)
            if isinstance(conv, keras.layers.Conv2D) and consumers.get(conv.name) == 1 and layer.axis in (-1, 3):
                pairs[conv.name] = layer
    folded_bn = {bn.name for bn in pairs.values()}

    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        if layer.name in folded_bn:
            return FoldedBatchNormalization(name=layer.name, dtype=precision or layer.dtype_policy.name)
        config = layer.get_config()
        if layer.name in pairs:
            config["use_bias"] = True
        if precision is not None and "dtype" in config and layer.name != "softmax":
            config["dtype"] = precision
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    originals = {layer.name: layer for layer in model.layers}
    for layer in clone.layers:
        if layer.name in folded_bn or not layer.weights:
            continue
        original = originals[layer.name]
        if layer.name not in pairs:
            layer.set_weights(original.get_weights())
            continue
        bn = pairs[layer.name]
        kernel = keras.ops.convert_to_numpy(original.kernel).astype(np.float64)
        bias = keras.ops.convert_to_numpy(original.bias).astype(np.float64) if original.use_bias else 0.0
        mean = keras.ops.convert_to_numpy(bn.moving_mean).astype(np.float64)
        variance = keras.ops.convert_to_numpy(bn.moving_variance).astype(np.float64)
        gamma = keras.ops.convert_to_numpy(bn.gamma).astype(np.float64) if bn.scale else 1.0
        beta = keras.ops.convert_to_numpy(bn.beta).astype(np.float64) if bn.center else 0.0
        scale = gamma / np.sqrt(variance + bn.epsilon)
        layer.set_weights([(kernel * scale).astype("float32"), ((bias - mean) * scale + beta).astype("float32")])
    return clone


def with_precision(model: keras.Model, precision: str) -> keras.Model:
    """The same network and weights computing in ``precision`` (a new model; ``model`` is unchanged).

    The output layer named ``softmax`` stays float32.

    Raises:
        ValueError: an unknown precision, naming the choices.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {PRECISIONS}")
    if precision == "float32" and model.dtype_policy.name == "float32":
        return model

    def clone_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if "dtype" in config and layer.name != "softmax":
            config["dtype"] = precision
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    clone.set_weights(model.get_weights())
    return clone


def inference_model(model: keras.Model, precision: str = "bfloat16") -> keras.Model:
    """What scores lesions: ``model`` itself for ``float32``, else BN folded and cast to ``precision``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {PRECISIONS}")
    if precision == "float32":
        return model
    return fold_batch_norm(model, precision)


#: a scoring cache keeps the networks of this many (network, precision) pairs, the last used (each about half the
#: size of its network file: BN folded, bfloat16 weights)
SCORING_CACHE_KEEP = 4


def _cache_key(network_path: Path, precision: str) -> str:
    """What a cached scoring network was made from: the network file's bytes, the precision, Keras's version and
    this module's code (a change to the folding makes every entry stale)."""
    digest = hashlib.sha256()
    with open(network_path, "rb") as stream:
        digest.update(hashlib.file_digest(stream, "sha256").digest())
    digest.update(Path(__file__).read_bytes())
    digest.update(f"{precision}|keras {keras.__version__}".encode())
    return digest.hexdigest()[:32]


def scoring_network(
    network_path: Path, precision: str, cache: Path | None = None
) -> tuple[keras.Model | None, keras.Model]:
    """The network of ``network_path`` and the same network made ready for scoring (``inference_model``).

    With ``cache``, the scoring network is kept there (one ``.keras`` file per network file, precision, Keras and
    folding code; the ``SCORING_CACHE_KEEP`` last used) and the next process loads it instead of loading the
    network and folding it again: the same layers and weights, so the same probabilities, bit for bit. A cache that
    cannot be written is skipped; a damaged entry is made again.

    Returns:
        (the network as trained, or None where the cache answered; the scoring network).
    """
    if cache is None or precision == "float32":
        model = keras.saving.load_model(network_path, compile=False)
        return model, inference_model(model, precision)
    cached = cache / f"{_cache_key(network_path, precision)}.keras"
    if cached.is_file():
        try:
            scorer = keras.saving.load_model(cached, compile=False)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            cached.unlink(missing_ok=True)
        else:
            os.utime(cached)  # last used
            return None, scorer
    model = keras.saving.load_model(network_path, compile=False)
    scorer = inference_model(model, precision)
    try:
        cache.mkdir(mode=0o700, parents=True, exist_ok=True)
        staged = cache / f".{cached.stem}.{os.getpid()}.keras"  # whole or absent: a reader never sees half a file
        scorer.save(staged)
        staged.replace(cached)
        kept = sorted(cache.glob("*.keras"), key=lambda entry: entry.stat().st_mtime_ns, reverse=True)
        for stale in kept[SCORING_CACHE_KEEP:]:
            stale.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only or full disk: scoring goes on without the cache
    return model, scorer


def cpu_bfloat16_units(cpuinfo: str | None = None) -> list[str]:
    """The native bfloat16 units this CPU lists in ``/proc/cpuinfo`` (or ``cpuinfo``); [] where none or unknown."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: nothing known, so nothing assumed
            return []
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        wanted = BFLOAT16_CPU_FLAGS.get(key.strip())
        if wanted:  # the first processor's line speaks for all
            present = set(value.split())
            return [flag for flag in wanted if flag in present]
    return []


def resolve_precision(precision: str, cpuinfo: str | None = None) -> tuple[str, str]:
    """The precision to score in, and why: ``auto`` is the fast path only where the CPU has bfloat16 units.

    Without them bfloat16 arithmetic is emulated, so ``auto`` keeps float32 there (the machines
    measured for ``bench/inference_cpu.py`` all had the units).

    Raises:
        ValueError: an unknown precision, naming the choices.
    """
    if precision != "auto":
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: expected 'auto' or one of {PRECISIONS}")
        return precision, "set in the profile"
    units = cpu_bfloat16_units(cpuinfo)
    if units:
        return "bfloat16", f"auto: this CPU has bfloat16 units ({', '.join(units)})"
    return "float32", "auto: no bfloat16 units found on this CPU (amx_bf16, avx512_bf16 or Arm bf16)"
