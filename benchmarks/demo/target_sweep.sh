#!/usr/bin/env bash
# How much of the demo teacher each prune target keeps at the demo's distillation budget:
# score once, prune to several targets from the same scores, held-out perplexity right after
# pruning, then KD for the promising targets: 8,192 tokens (the 4 steps a quiet 2-core AVX2
# CPU fits in the demo's budget) at two learning rates, and 40,960 tokens. fp32, CPU.
# Usage: bash benchmarks/demo/target_sweep.sh [WORK]
set -euo pipefail
work=${1:-out/demo-sweep}
export OMP_WAIT_POLICY=PASSIVE
m="${MINITRON:-minitron}"
mkdir -p "$work"
python - "$work" <<'PY'
import sys
from pathlib import Path
from minitron_deploy import assets
work = Path(sys.argv[1])
assets.resolve_checkpoint("builtin:smollm2-135m", work)
for ref in ("builtin:stdlib-docs", "builtin:stdlib-docs-heldout"):
    assets.resolve(ref, work)
PY
cd "$work"
ppl() { $m eval --model "$1" --tasks ppl --ppl-data data/stdlib-docs-heldout.txt --seq-len 256 \
  --ppl-seqs 32 --out "ev-$1.json" > /dev/null 2>&1
  python -c "import json,sys; r=json.load(open('ev-$1.json'))['results']['$1']; \
print(f\"$1: ppl {r['ppl']:.2f} +- {r['ppl_stderr']:.2f}\")"; }
[ -f scores.safetensors ] || $m score --model smollm2-135m --calib data/stdlib-docs.txt \
  --calib-samples 64 --seq-len 256 --batch-size 8 --depth-metric bi --out scores
ppl smollm2-135m
for target in 0.5 0.7 0.8 0.9; do
  [ -d "p$target" ] || $m prune --model smollm2-135m --scores scores.safetensors \
    --target-params "$target" --out "p$target" > /dev/null
  ppl "p$target"
done
for ffn in 768 1024; do
  [ -d "ffn$ffn" ] || $m prune --model smollm2-135m --scores scores.safetensors \
    --ffn-hidden-size "$ffn" --out "ffn$ffn" > /dev/null
  ppl "ffn$ffn"
done
kd() {  # target tokens lr
  out="kd$1-$2-$3"
  [ -d "$out" ] || $m distill --teacher smollm2-135m --student "p$1" --data data/stdlib-docs.txt \
    --out "$out" --tokens "$2" --seq-len 256 --batch-size 8 --lr "$3" --warmup-steps 2 \
    --checkpoint-every 100 --precision fp32 > /dev/null 2>&1
  ppl "$out"
}
for target in 0.9 0.8; do for lr in 2e-4 1e-3; do kd "$target" 8192 "$lr"; done; done
for target in 0.8 0.7; do kd "$target" 40960 1e-3; done
