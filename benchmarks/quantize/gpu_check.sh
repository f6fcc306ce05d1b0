#!/usr/bin/env bash
# One prepared run for a lent H100 (no network, no vLLM, no disk writes of weights; ~7 minutes):
# the random-weight Llama-3.1-8B teacher and its Minitron 4B-Width (hidden 3072, ffn 9216, 32
# layers) and 4B-Depth (16 layers) students on our torch fast path (compiled, CUDA graphs), in
# bf16 and in FP8 (weights rounded in memory exactly as `minitron quantize --scheme fp8` writes
# them, activations per token, torch._scaled_mm), at the paper's protocol (ISL 512, OSL 128, the
# 8B at batch 32, the 4B models at batch 64; as benchmarks/throughput/run_gpu.sh) and at batch 1;
# the ratios against their goals in OUT/ratios.json (rewritten after every step, so a run cut
# short keeps what it measured).
# Usage (repository root): bash benchmarks/quantize/gpu_check.sh [OUT_DIR] [WORK_DIR]
# STEPS: which of bf16 fp8 batch1-fp8 batch1-bf16 to run, in order (default: all four);
# MINITRON_TINY=1: tiny shapes on whatever device (a CPU check of the script's logic);
# PYTHON: the python with this package's dependencies (default python3).
set -uo pipefail
out=${1:-benchmarks/quantize/results}
work=${2:-/tmp/minitron-quantize-gpu}
steps=${STEPS:-bf16 fp8 batch1-fp8 batch1-bf16}
tiny=()
[ "${MINITRON_TINY:-0}" = 1 ] && tiny=(--tiny)
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
helper() { "$py" benchmarks/quantize/gpu_models.py "$@"; }
mkdir -p "$out"
rm -rf "$work" "$out/ratios.json"
if [ ${#tiny[@]} = 0 ]; then
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw \
    --format=csv | tee "$out/nvidia-smi.txt"
fi
helper configs "$work" "${tiny[@]}" || exit 1
status=0
for step in $steps; do
  echo "=== $step $(date -u +%FT%TZ)"
  rm -rf "${out:?}/$step"
  helper bench "$work" "$out" "$step" "${tiny[@]}" 2>&1 | tee "$out/$step.log" || status=1
  helper ratios "$out" || status=1
done
echo "=== done $(date -u +%FT%TZ)"
exit $status
