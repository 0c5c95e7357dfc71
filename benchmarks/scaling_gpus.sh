#!/bin/bash
# The multi-GPU runs of issue 17 (docs/distributed.md, "multi-GPU runs not yet done"), for a
# host with several H200s (the `run` tool's nvidia-h200-x2 / -x4 / -x8):
#   run(kind="nvidia-h200-x8", command="GPUS=1,2,4,8 bash benchmarks/scaling_gpus.sh",
#       carry=[".whl"], timeout_s=600)
# Steps (STEPS, comma list): ablation (MLP exhaustive ablation, strong scaling), verify
# (bilens verify end to end under torchrun, one vs N ranks, tensors compared), lm (node
# ablation of the language model: needs LM_CKPT, a SPEC §9 checkpoint), ddp (DDP training
# weak scaling: `bilens train --kind transformer` under torchrun, 64 rows per GPU).
# GPUS: the world sizes (default 1,2,4,8; drop those the host lacks). OUT: results folder.
# A dry run of the first two steps on a CPU (gloo):
#   DEVICE=cpu GPUS=1,2 N=256 N_VERIFY=64 ABL_EXTRA="--d-model 64 --d-hidden 128" \
#       bash benchmarks/scaling_gpus.sh
set -o pipefail
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
[ -d .whl/data ] && export BILENS_DATA_DIR=$PWD/.whl/data
OUT=${OUT:-out}; mkdir -p "$OUT"
STEPS=${STEPS:-ablation,verify}
GPUS=${GPUS:-1,2,4,8}
N=${N:-80000}                     # 80,000 inputs x 4 x 1024 channels: ~6 s on one H200
DEVICE=${DEVICE:-cuda}
if [ "$DEVICE" = cuda ]; then
  ABL_EXTRA=${ABL_EXTRA:-"--d-model 256 --d-hidden 1024 --backend triton --precision 3xfp16"}
  nvidia-smi --query-gpu=name,clocks.sm,memory.used --format=csv | tee "$OUT/gpu.txt"
fi
TORCHRUN="python3 -m torch.distributed.run --standalone"
has() { [[ ",$STEPS," == *",$1,"* ]]; }

if has ablation; then   # strong scaling: the same exhaustive ablation on 1, 2, 4, 8 GPUs
  for g in ${GPUS//,/ }; do
    timeout 300 $TORCHRUN --nproc-per-node "$g" benchmarks/scaling_dist.py -- --device "$DEVICE" \
        --n "$N" --layers 4 $ABL_EXTRA --repeats 3 --out "$OUT/ablation-$g.json" 2>&1 | grep -v '^W\|^\*' | tee -a "$OUT/ablation.log"
  done
  for g in ${GPUS//,/ }; do
    [ "$g" != 1 ] && python3 benchmarks/scaling_dist.py --compare "$OUT/ablation-1.json" \
        "$OUT/ablation-$g.json" | tee -a "$OUT/efficiency.txt"
  done
fi

if has verify; then     # bilens verify under torchrun writes the one-rank tensors
  # one intra-op thread per process in both runs (torchrun sets it only when N > 1): a CPU
  # matmul split over 2 threads rounds differently from one thread (GPUs: no effect)
  export OMP_NUM_THREADS=1
  CKPT=${CKPT:-$OUT/ckpt}
  [ -d "$CKPT" ] || python3 -m bilens train --dataset synthetic --norm rms --position post \
      --d-model 64 --d-hidden 256 --layers 4 --epochs 2 --seed 0 --out "$CKPT" > /dev/null
  for g in 1 ${GPUS##*,}; do
    timeout 300 $TORCHRUN --nproc-per-node "$g" -m bilens -- verify "$CKPT" --dataset synthetic \
        --n "${N_VERIFY:-2048}" --float64 --device "$DEVICE" --no-plots --no-progress --out "$OUT/verify-$g" \
        2>&1 | tail -2 | tee -a "$OUT/verify.log"
  done
  python3 - "$OUT/verify-1" "$OUT/verify-${GPUS##*,}" <<'EOF' | tee -a "$OUT/verify.log"
import json, sys, torch
from safetensors.torch import load_file
a, b = (load_file(f"{d}/results.safetensors") for d in sys.argv[1:])
same = all(torch.equal(a[k].nan_to_num(7.0), b[k].nan_to_num(7.0)) for k in a)
info = json.load(open(f"{sys.argv[2]}/metrics.json"))["info"]
print("float64 tensors identical:", same, "| world_size", info["world_size"],
      "| split", info["distributed"]["jobs_per_rank"], info["distributed"]["balance"])
EOF
fi

if has lm; then         # node ablation of the language model, 128 sequences (issue 17)
  [ -n "$LM_CKPT" ] || { echo "lm: set LM_CKPT to a transformer checkpoint (docs/spec.md §9)"; exit 1; }
  for g in ${GPUS//,/ }; do
    /usr/bin/time -f "lm $g GPUs: %e s" timeout 600 $TORCHRUN --nproc-per-node "$g" -m bilens -- \
        verify "$LM_CKPT" --n 128 --seq-len "${SEQ_LEN:-64}" --device cuda --no-plots \
        --no-progress --out "$OUT/lm-$g" 2>&1 | tail -1 | tee -a "$OUT/lm.log"
  done
fi

if has ddp; then        # DDP weak scaling: the same per-GPU batch on 1, 2, 4, 8 GPUs, tokens/s
  for g in ${GPUS//,/ }; do
    timeout 600 $TORCHRUN --nproc-per-node "$g" -m bilens -- train --kind transformer \
        --dataset synthetic-lm --layers 4 --d-model 256 --d-hidden 1024 --heads 4 \
        --seq-len 256 --steps 200 --batch-size $((64 * g)) --seed 0 --no-progress \
        --out "$OUT/ddp-$g" 2>&1 | tail -3 | tee -a "$OUT/ddp.log"
  done
fi
