#!/usr/bin/env bash
# bench/train_gpu.py twice in a row with one persistent JAX compilation cache: the cold figure
# (first run: everything compiled) and the warm one (second run: programs read from the cache, as
# for a scheduled retraining on the same machine), plus training images/s at batch 8 without
# augmentation on the first and at batch 64 on the second.
# Usage: bench/train_gpu_twice.sh PATCHES.npz OUT_DIR [more train_gpu.py arguments]
set -euo pipefail
patches=${1:?usage: $0 PATCHES.npz OUT_DIR [train_gpu.py arguments]}
out=${2:?usage: $0 PATCHES.npz OUT_DIR [train_gpu.py arguments]}
shift 2
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
export KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$out/jax-cache}
# the cold run also times batch 8 without augmentation (after its protocol figures): where an epoch goes
python3 "$here/train_gpu.py" --patches "$patches" --throughput --throughput-without-augmentation 8 \
    --out "$out/cold.json" "$@"
python3 "$here/train_gpu.py" --patches "$patches" --throughput 64 --out "$out/warm.json" "$@"
python3 - "$out" <<'PY'
import json, sys
from pathlib import Path
for run in ("cold", "warm"):
    data = json.loads((Path(sys.argv[1]) / f"{run}.json").read_text())
    protocol = data.get("protocol", {})
    print(f"{run}: protocol wall {protocol.get('wall_s', float('nan')):.1f} s, first epoch "
          f"{protocol.get('first_epoch_s', float('nan')):.1f} s, inference {json.dumps(data.get('inference'))}, "
          f"training images/s {json.dumps(data.get('training_images_per_s'))}")
PY
