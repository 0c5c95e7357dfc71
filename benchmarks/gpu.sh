#!/bin/bash
# The GPU rows of docs/benchmarks.md, in two device calls (the H200 of the `run` tool;
# each call has 10 minutes, and a cold machine compiles every Triton and inductor kernel):
#   run(command="STEPS=bench,tests BENCH_EXTRA='--ppe 64' bash benchmarks/gpu.sh",
#       carry=[".whl"], timeout_s=600)
#   run(command="STEPS=attribution,profile,scaling bash benchmarks/gpu.sh", carry=[".whl"])
# Steps: bench, tests, variants, attribution, profile, scaling (STEPS, comma list).
# PREC picks the precision of the profile and scaling steps (default 3xfp16).
# .whl/ holds the captum wheel and .whl/data/mnist-test.npz (benchmarks/export_data.py).
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src BILENS_DATA_DIR=$PWD/.whl/data PYTHONUNBUFFERED=1
OUT=${OUT:-out}; mkdir -p "$OUT"
STEPS=${STEPS:-bench,tests,variants,attribution,profile,scaling}
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, captum, triton
print('torch', torch.__version__, 'captum', captum.__version__, 'triton', triton.__version__)"
has() { [[ ",$STEPS," == *",$1,"* ]]; }
if has bench; then
  timeout 200 python3 -m bilens bench --device cuda --n 10000 --d-hidden 1024 --data mnist \
      --precision ${BENCH_PRECISION:-3xtf32,3xfp16} --backend triton $BENCH_EXTRA --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
fi
if has tests; then     # the CUDA-only tests (the Triton kernels against float64)
  timeout ${TESTS_TIMEOUT:-300} python3 -m pytest -q -p no:cacheprovider --durations=8 \
      tests/test_triton_ops.py tests/test_targets.py 2>&1 | tee "$OUT/tests.log"
fi
if has variants; then
  timeout 150 python3 benchmarks/variants.py --device cuda --n 10000 --d-hidden 1024 \
      --data mnist --memory ${VARIANTS_MEMORY:-4GiB,16GiB} --out "$OUT/variants.json" 2>&1 | tee "$OUT/variants.log"
fi
if has attribution; then   # attribution against captum over batch sizes, and its profile
  timeout 120 python3 benchmarks/attribution_vs_captum.py --device cuda --batches 100,1000,10000 \
      --repeats 10 --profile --out "$OUT/attribution.json" > "$OUT/attribution.log" 2>&1
  head -8 "$OUT/attribution.log"
fi
if has profile; then
  timeout 40 python3 benchmarks/profile_ablation.py --device cuda --n 2000 --precision ${PREC:-3xfp16} \
      --backend triton > "$OUT/profile.txt" 2>&1
  tail -30 "$OUT/profile.txt"
fi
if has scaling; then
  timeout 130 python3 benchmarks/scaling.py --device cuda --n 2000 --precision ${PREC:-3xfp16} --backend triton \
      --out "$OUT/scaling.json" 2>&1 | tee "$OUT/scaling.log"
fi
