#!/bin/bash
# `bilens verify` on a transformer from the CLI, eager and with the Triton GEMMs, on a GPU:
# train a small synthetic-lm model, verify it twice, compare every oracle tensor.
#   run(command="bash benchmarks/lm_verify_backends.sh")
set -o pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
W=$(mktemp -d)
python3 -m bilens train --kind transformer --dataset synthetic-lm --d-model 64 --d-hidden 128 \
    --layers 2 --heads 2 --seq-len 32 --steps ${STEPS:-300} --device ${DEVICE:-cuda} --out $W/slm 2>&1 | tail -2
for backend in eager triton; do
  python3 -m bilens verify $W/slm --dataset synthetic-lm --n 16 --target next --device ${DEVICE:-cuda} \
      --backend $backend --no-progress --no-plots --out $W/v-$backend 2>&1 | tail -1
  cp $W/v-$backend/metrics.json "$OUT/metrics-$backend.json"
done
python3 - $W <<'PY' 2>&1 | tee "$OUT/compare.txt"
import json, sys
from safetensors.torch import load_file
w = sys.argv[1]
e, t = (load_file(f"{w}/v-{b}/results.safetensors") for b in ("eager", "triton"))
for k in sorted(e):
    if k.startswith(("actual", "feature.actual")):
        ok = e[k].isfinite() & t[k].isfinite()
        rel = ((e[k] - t[k])[ok].norm() / e[k][ok].norm()).item()
        print(f"{k}: triton vs eager, normwise {rel:.1e}")
for b in ("eager", "triton"):
    info = json.load(open(f"{w}/v-{b}/metrics.json"))["info"]
    print(b, info["backend"], info["precision"], info["seconds"], "s")
PY
