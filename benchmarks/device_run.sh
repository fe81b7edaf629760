#!/bin/bash
# One device session: the full GPU benchmark and, beside it on two pinned cores, the CPU
# --small benchmark and the threshold sweep. Usage: bash benchmarks/device_run.sh OUTDIR
set -u
OUT=${1:-/tmp}
export PYTHONPATH=.
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu_info.txt" 2>&1
(taskset -c 0,1 env JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES= timeout 360 python benchmarks/step_bench.py "$OUT/cpu_small.jsonl" --small --budget 280 > "$OUT/cpu_small.log" 2>&1;
 taskset -c 0,1 env JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES= timeout 130 python benchmarks/step_bench.py "$OUT/cpu_sweep.jsonl" --sweep --budget 100 > "$OUT/cpu_sweep.log" 2>&1) &
taskset -c 2-15 timeout 500 python benchmarks/step_bench.py "$OUT/gpu.jsonl" --budget 400 > "$OUT/gpu.log" 2>&1
wait
