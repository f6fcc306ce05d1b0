#!/usr/bin/env bash
# The throughput protocol on one GPU (random-weight shapes, ISL 512, OSL 128, bf16).
# Usage: benchmarks/throughput/run_gpu.sh OUT_DIR [protocol] [check] [batch1] [matched]
# (no step named: all four). Plots are drawn afterwards from bench.json (--no-plots here).
set -uo pipefail
out=${1:?output dir}; shift
steps=${*:-protocol check batch1 matched}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
bench() { python -m minitron_deploy.cli bench --no-plots "$@"; }
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw \
  --format=csv
for step in $steps; do
  echo "=== $step $(date -u +%FT%TZ)"
  case $step in
    protocol)  # the paper's max-throughput pairs: 8B at batch 32, the 4B models at batch 64
      bench --models llama31-8b@32 minitron-4b-width@64 minitron-4b-depth@64 --max-throughput \
        --backend torch --out "$out/protocol" ;;
    check)  # compiled + graph-captured decode gives HF generate's greedy tokens
      python benchmarks/throughput/check_gpu.py ;;
    batch1)  # goals: >= 75% of the HBM limit and >= 1.5x HF generate with its static cache
      bench --models llama31-8b --backend torch,hf --batch-sizes 1 --out "$out/batch1" ;;
    matched)
      bench --models llama31-8b minitron-4b-width minitron-4b-depth --backend torch \
        --batch-sizes 1,8,32,64 --out "$out/matched" ;;
  esac
done
echo "=== done $(date -u +%FT%TZ)"
