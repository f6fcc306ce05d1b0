#!/usr/bin/env bash
# One prepared run for a lent GPU (about 5 minutes on an H100/H200): the cost of FSDP on one
# GPU against the single-process step on the same batch (goal: at most 1.10x), and the
# planner's estimate against measured peak GPU memory, on a ~1B random Llama pair.
# Usage (repository root, CUDA torch installed): bash benchmarks/distill/gpu_check.sh [OUT_DIR]
set -euo pipefail
out=${1:-benchmarks/distill/results}
mkdir -p "$out"
python benchmarks/distill/bench_memory.py --device cuda --shape 1b --steps 8 --batch 4 \
    --seq-len 1024 --only single "fsdp, 1 rank" --out "$out/fsdp-gpu.json"
