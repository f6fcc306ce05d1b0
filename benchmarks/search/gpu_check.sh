#!/usr/bin/env bash
# One prepared run for a lent GPU (under 4 minutes on an H200): the Llama-3.1-8B shapes that
# `minitron search --target-speedup 2.0 --at-batch 64` proposes for the H100 and the H200
# (the two closest to the target each), timed with `minitron bench` (torch backend, random
# weights from config-only folders, bf16, batch 64, ISL 512 / OSL 128 as predicted) next to the
# 8B itself; writes predicted against measured speedup to OUT/predicted_vs_measured.json.
# Usage (repository root, CUDA torch installed): bash benchmarks/search/gpu_check.sh [OUT_DIR]
set -euo pipefail
out=${1:-benchmarks/search/results}
mkdir -p "$out"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw \
  --format=csv | tee "$out/nvidia-smi.txt"
echo "=== propose $(date -u +%FT%TZ)"
rm -rf "$out/llama31-8b" "$out"/dry-* "$out/bench"
python benchmarks/search/speedup.py propose "$out" --gpus h100 h200 --isl 512 --osl 128
read -r -a shapes <<< "$(python benchmarks/search/speedup.py models "$out" --per-gpu 2)"
echo "=== bench ${#shapes[@]} shapes + llama31-8b $(date -u +%FT%TZ)"
python -m minitron_deploy.cli bench --models llama31-8b "${shapes[@]}" --backend torch \
  --isl 512 --osl 128 --batch-sizes 64 --reps 2 --warmup 1 --dtype bf16 --no-plots \
  --out "$out/bench" 2>&1 | tee "$out/bench-log.txt"
python benchmarks/search/speedup.py compare "$out" "$out/bench"
echo "=== done $(date -u +%FT%TZ)"
