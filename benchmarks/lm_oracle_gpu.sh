#!/bin/bash
# The node oracle's GPU rows (docs/lm-verification.md, docs/benchmarks.md), in one device call:
#   run(command="bash benchmarks/lm_oracle_gpu.sh", carry=[".whl/ref"])
# .whl/ref holds copies of sequence_plan.py at earlier commits, for the side-by-side step
# (git show REF:src/bilens/ablation/_engine/sequence_plan.py > .whl/ref/sequence_plan_REF.py).
# Steps (STEPS, comma list; run in this order: full, kernel, tests, against, subset,
# profile, attribution): attribution (benchmarks/lm_attribution.py at the issue's shape,
# 128 sequences, or each of ATTRIBUTION_N, chunked by ATTRIBUTION_MEMORY: every mode
# through autograd and the explicit backward, renorm also with backend="triton";
# ATTRIBUTION_FLAGS are lm_attribution.py's, e.g. --profile), tests (the CUDA tests of the oracle's backends), against (today
# at each AGAINST_PREC against each REFS file at AGAINST_REF_PREC: fp32 by default,
# `same`: the same precision), subset
# (8 sequences: every node, and the subset against the prefix-reusing loop, at each PREC;
# SUBSET_FLAGS are lm_oracle.py's, e.g. '--subset-repeat 10'; SUBSET_RUNS processes),
# profile (where the GPU's time goes, at each PROFILE_PREC), full (128 sequences at FULL_PREC,
# once per FULL_MEMORY and per `|`-separated flag set of FULL_FLAGS, e.g.
# FULL_FLAGS='|--even-batches'; PROFILE_FLAGS likewise, e.g. '|--subset 8'), kernel (benchmarks/attention_kernel.py: the fused attention
# kernel at each launch shape of LAUNCH and against each module file of VARIANTS). A precision
# is fp32, 3xtf32 (eager cuBLAS), triton:3xfp16, triton:3xtf32. TESTS_K: pytest's -k for
# the tests step (default gpu: all of them) in TESTS_FILES (default
# tests/test_sequence_precision.py). The compile caches (Triton's and inductor's)
# live in /tmp/bilens-cache: CACHE_IN=file.tgz (carried) starts from one, CACHE_OUT=1 returns
# this call's as $OUT/compile-cache.tgz.part-* (15 MiB parts: `cat` them to one file; a
# cold start compiles for about two minutes). AUTOTUNE=1 prints the winning launch shapes.
set -o pipefail
export PYTHONPATH=$PWD/src:$PWD/benchmarks PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=/tmp/bilens-cache/triton TORCHINDUCTOR_CACHE_DIR=/tmp/bilens-cache/inductor
mkdir -p /tmp/bilens-cache
[[ -n ${CACHE_IN:-} ]] && tar xzf "$CACHE_IN" -C /tmp/bilens-cache
[[ -n ${AUTOTUNE:-} ]] && export TRITON_PRINT_AUTOTUNING=1
OUT=${OUT:-out}; mkdir -p "$OUT"
STEPS=${STEPS:-tests,against,subset,profile,full}
has() { [[ ",$STEPS," == *",$1,"* ]]; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" >> "$OUT/gpu.txt"
if has full; then    # one run per FULL_MEMORY budget (the batch of ablations per kernel)
  IFS='|' read -r -a flag_sets <<< "${FULL_FLAGS:-}"
  [[ ${#flag_sets[@]} == 0 ]] && flag_sets=("")
  for mem in ${FULL_MEMORY:-16GiB}; do
    for flags in "${flag_sets[@]}"; do
      echo "== --memory $mem $flags"
      timeout ${FULL_TIMEOUT:-300} python3 benchmarks/lm_oracle.py --gpu --no-captum --no-hooks \
          --precision ${FULL_PREC:-triton:3xfp16} --memory $mem $flags 2>&1
    done
  done | tee "$OUT/oracle128.log"
fi
if has kernel; then
  timeout ${KERNEL_TIMEOUT:-200} python3 benchmarks/attention_kernel.py \
      ${LAUNCH:+--launch $LAUNCH} $(for v in $VARIANTS; do echo --variant $v; done) 2>&1 \
      | grep -v -i warn | tee "$OUT/kernel.log"
fi
if has tests; then
  timeout ${TESTS_TIMEOUT:-240} python3 -m pytest -q -p no:cacheprovider \
      ${TESTS_FILES:-tests/test_sequence_precision.py} -k "${TESTS_K-gpu}" 2>&1 | tail -8 \
      | tee "$OUT/tests.log"
fi
if has against; then
  for ref in ${REFS:-.whl/ref/sequence_plan_4ca389d.py .whl/ref/sequence_plan_e06188b.py}; do
    for prec in ${AGAINST_PREC:-fp32 3xtf32}; do
      ref_prec=${AGAINST_REF_PREC:-fp32}; [[ $ref_prec == same ]] && ref_prec=$prec
      timeout 150 python3 benchmarks/lm_oracle_against.py --device cuda --against "$ref" \
          --precision $prec --ref-precision $ref_prec --repeats 5 2>&1 \
          | grep -v -i warn
    done
  done | tee "$OUT/against.log"
fi
if has subset; then
  for run in $(seq ${SUBSET_RUNS:-1}); do     # each a new process (its first run's compile)
    echo "== subset process $run"
    timeout 240 python3 benchmarks/lm_oracle.py --gpu --n 8 --no-captum --no-hooks \
        --precision ${PREC:-fp32,triton:3xtf32,triton:3xfp16} ${SUBSET_FLAGS:-} 2>&1 \
        | grep -v -i -e warn -e autotun -e "^Triton"
  done | tee "$OUT/oracle8.log"
fi
if has profile; then
  IFS='|' read -r -a profile_sets <<< "${PROFILE_FLAGS:-}"
  [[ ${#profile_sets[@]} == 0 ]] && profile_sets=("")
  for prec in ${PROFILE_PREC:-triton:3xfp16}; do
    for flags in "${profile_sets[@]}"; do
      timeout ${PROFILE_TIMEOUT:-90} python3 benchmarks/lm_oracle_profile.py --n ${PROFILE_N:-2} \
          --memory ${PROFILE_MEMORY:-16GiB} --precision $prec $flags 2>&1
    done
  done > "$OUT/profile.log"
  grep -A3 "nodes: wall" "$OUT/profile.log" | cut -c1-160
fi
if has attribution; then
  for n in ${ATTRIBUTION_N:-128}; do        # sequences per batch, e.g. ATTRIBUTION_N='128 1024'
    timeout ${ATTRIBUTION_TIMEOUT:-150} python3 benchmarks/lm_attribution.py --device cuda \
        --configs issue --n $n --repeats 10 --no-captum --memory ${ATTRIBUTION_MEMORY:-4GiB} \
        ${ATTRIBUTION_FLAGS:-} 2>&1
  done | tee "$OUT/attribution.log"
fi
[[ -n ${CACHE_OUT:-} ]] && tar czf - -C /tmp/bilens-cache . \
    | split -b 15m - "$OUT/compile-cache.tgz.part-" && ls -l "$OUT"/compile-cache.tgz.part-*
true
