#!/bin/bash
# The GPU measurements still owed by docs/benchmarks.md, in order of value, within ~9 minutes (timeouts sum to 520 s):
#   1. the packed rows of the 2,000-leaf tree (host overhead of the Layout hash, since fixed);
#   2. the threshold sweep on the GPU (DEFAULT_THRESHOLD is from CPU sweeps only);
#   3. interleaved A/B against optax: whole training steps, then the optimizer step on the
#      single and transformer trees (the 2,000-leaf per-leaf programs take minutes to compile).
# Usage: bash benchmarks/device_followup.sh OUTDIR
set -u
OUT=${1:-/tmp}
export PYTHONPATH=.
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu_info.txt" 2>&1
timeout 60 python benchmarks/step_bench.py "$OUT/tiny_packed.jsonl" --trees tiny --only packed --no-torch --skip-train > "$OUT/tiny_packed.log" 2>&1
timeout 110 python benchmarks/step_bench.py "$OUT/sweep.jsonl" --sweep --budget 90 > "$OUT/sweep.log" 2>&1
timeout 250 python benchmarks/ab_bench.py "$OUT/ab_train.jsonl" --sections train > "$OUT/ab_train.log" 2>&1
timeout 100 python benchmarks/ab_bench.py "$OUT/ab_opt.jsonl" --sections opt --trees single,transformer > "$OUT/ab_opt.log" 2>&1
