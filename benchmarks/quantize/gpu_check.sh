#!/usr/bin/env bash
# One prepared run for a lent H100 (no network; ~8 minutes): random-weight Llama-3.1-8B and its
# Minitron 4B-Width (hidden 3072, ffn 9216, 32 layers) and 4B-Depth (16 layers) students, built
# on the GPU and saved in bf16; `minitron quantize --scheme fp8` (compressed-tensors, no
# calibration) of all three; then vLLM throughput at the paper's protocol (ISL 512, OSL 128, the
# 8B at batch 32, the 4B models at batch 64) for 8B bf16, 8B FP8, 4B-Width FP8 and 4B-Depth FP8,
# and the ratios against their goals in OUT/ratios.json.
# Needs a vLLM environment for CUDA ($MINITRON_VLLM_PYTHON or .venv-vllm); stops in one line,
# before building anything, where there is none.
# Usage (repository root): bash benchmarks/quantize/gpu_check.sh [OUT_DIR] [WORK_DIR]
# MINITRON_TINY=1: tiny shapes on whatever device (a CPU check of the script's logic);
# PYTHON: the python with this package's dependencies (default python3).
set -euo pipefail
out=${1:-benchmarks/quantize/results}
work=${2:-/tmp/minitron-quantize-gpu}
tiny=${MINITRON_TINY:-0}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
minitron() { "$py" -m minitron_deploy.cli "$@"; }
"$py" -c "from minitron_deploy.serve.vllm_env import vllm_python; vllm_python()" 2>/dev/null || {
  echo "no vLLM environment here: set MINITRON_VLLM_PYTHON to a python with vLLM for CUDA" >&2
  exit 3; }
mkdir -p "$out"
rm -rf "$work" "$out/bench"
if [ "$tiny" = 1 ]; then
  build=(--tiny); proto=(--isl 16 --osl 4 --reps 1 --warmup 0 --dtype fp32); big=2; small=4
else
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw \
    --format=csv | tee "$out/nvidia-smi.txt"
  build=(); proto=(--isl 512 --osl 128 --reps 2 --warmup 1 --dtype bf16); big=32; small=64
fi
echo "=== build $(date -u +%FT%TZ)"
"$py" benchmarks/quantize/gpu_models.py build "$work" "${build[@]}"
for model in teacher width depth; do
  echo "=== quantize $model $(date -u +%FT%TZ)"
  minitron quantize --model "$work/$model-bf16" --out "$work/$model-fp8" --scheme fp8
  [ "$model" = teacher ] || rm -rf "$work/$model-bf16"  # the students' bf16 is not timed
done
du -sh "$work"/* | tee "$out/sizes.txt"
echo "=== bench $(date -u +%FT%TZ)"
minitron bench --models "$work/teacher-bf16@$big" "$work/teacher-fp8@$big" \
  "$work/width-fp8@$small" "$work/depth-fp8@$small" --backend vllm --max-throughput \
  "${proto[@]}" --no-plots --out "$out/bench" 2>&1 | tee "$out/bench-log.txt"
"$py" benchmarks/quantize/gpu_models.py ratios "$out/bench/bench.json" "$out/ratios.json"
echo "=== done $(date -u +%FT%TZ)"
