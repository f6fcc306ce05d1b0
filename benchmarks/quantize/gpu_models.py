"""Helper of gpu_check.sh: the random-weight Llama-3.1-8B teacher and its Minitron 4B-Width and
4B-Depth students (``minitron bench``'s named shapes) built on the device and saved in bf16, and
the FP8 speed-up ratios read back from the benchmark's report.

    python benchmarks/quantize/gpu_models.py build WORK [--tiny]
    python benchmarks/quantize/gpu_models.py ratios BENCH_JSON OUT_JSON

``--tiny`` keeps the vocabulary and rope but shrinks every model to 2 or 1 layers of width 128
(a CPU check of the script's logic).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from minitron_deploy.bench.models import named_config
from minitron_deploy.core.shape import ModelShape, reshaped_config

#: folder -> named shape.
MODELS = {"teacher-bf16": "llama31-8b", "width-bf16": "minitron-4b-width",
          "depth-bf16": "minitron-4b-depth"}
#: The tiny stand-ins (hidden, ffn, heads, kv heads, layers, head_dim).
TINY = {"llama31-8b": ModelShape(128, 256, 4, 2, 2, 32),
        "minitron-4b-width": ModelShape(96, 192, 4, 2, 2, 32),
        "minitron-4b-depth": ModelShape(128, 256, 4, 2, 1, 32)}
#: (name, numerator model, denominator model, goal).
RATIOS = (("4B-Width FP8 / 8B bf16", "width-fp8", "teacher-bf16", 3.0),
          ("4B-Depth FP8 / 8B FP8", "depth-fp8", "teacher-fp8", 2.7),
          ("4B-Width FP8 / 8B FP8", "width-fp8", "teacher-fp8", 1.8),
          ("8B FP8 / 8B bf16", "teacher-fp8", "teacher-bf16", None))


def build(work: Path, tiny: bool) -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for folder, name in MODELS.items():
        config = named_config(name)
        if tiny:
            config = reshaped_config(config, TINY[name])
        torch.manual_seed(0)
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.save_pretrained(str(work / folder))
        print(f"built {folder}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B params "
              f"on {device}", flush=True)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()


def ratios(bench_json: Path, out_json: Path) -> None:
    report = json.loads(bench_json.read_text())
    best = {b["model"]: b for b in report["max_throughput"]}
    rows = []
    for name, num, den, goal in RATIOS:
        ratio = best[num]["output_tok_s"] / best[den]["output_tok_s"]
        met = None if goal is None else ratio >= goal
        rows.append({"ratio": name, "value": ratio, "goal": goal, "met": met,
                     "numerator": best[num], "denominator": best[den]})
        verdict = "" if goal is None else f" (goal >= {goal}: {'met' if met else 'MISSED'})"
        print(f"{name}: {ratio:.2f}x{verdict}")
    out_json.write_text(json.dumps({"ratios": rows, "machine": report["machine"]}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("work", type=Path)
    b.add_argument("--tiny", action="store_true")
    r = sub.add_parser("ratios")
    r.add_argument("bench_json", type=Path)
    r.add_argument("out_json", type=Path)
    args = parser.parse_args()
    if args.cmd == "build":
        build(args.work, args.tiny)
    else:
        ratios(args.bench_json, args.out_json)


if __name__ == "__main__":
    main()
