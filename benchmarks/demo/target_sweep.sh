#!/usr/bin/env bash
# How much of the demo teacher each prune target keeps at the demo's distillation budget:
# score once, prune to several targets from the same scores, held-out perplexity right after
# pruning, then ~40k tokens of KD (20 steps of 8 x 256, what a 2-core CPU fits in a few
# minutes) for the promising targets. fp32, CPU. Usage: bash benchmarks/demo/target_sweep.sh [WORK]
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
for target in 0.5 0.7 0.8; do
  [ -d "p$target" ] || $m prune --model smollm2-135m --scores scores.safetensors \
    --target-params "$target" --out "p$target" > /dev/null
  ppl "p$target"
done
for ffn in 768 1024; do
  [ -d "ffn$ffn" ] || $m prune --model smollm2-135m --scores scores.safetensors \
    --ffn-hidden-size "$ffn" --out "ffn$ffn" > /dev/null
  ppl "ffn$ffn"
done
for target in 0.8 0.7; do
  [ -d "kd$target" ] || $m distill --teacher smollm2-135m --student "p$target" \
    --data data/stdlib-docs.txt --out "kd$target" --tokens 40960 --seq-len 256 --batch-size 8 \
    --lr 1e-3 --warmup-steps 2 --checkpoint-every 100 --precision fp32 > /dev/null 2>&1
  ppl "kd$target"
done
