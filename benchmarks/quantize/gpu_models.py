"""Helper of gpu_check.sh: the Llama-3.1-8B teacher and its Minitron 4B-Width and 4B-Depth
students (``minitron bench``'s named shapes, random weights) timed on the torch fast path in bf16
and in FP8 (rounded in memory as ``minitron quantize --scheme fp8`` writes them), and the FP8
speed-up ratios against their goals.

    python benchmarks/quantize/gpu_models.py configs WORK [--tiny]
    python benchmarks/quantize/gpu_models.py bench WORK OUT STEP [--tiny]
    python benchmarks/quantize/gpu_models.py ratios OUT

``configs`` writes one config-only folder per model (random weights when benched); ``bench``
times one STEP into ``OUT/STEP`` (bench.json, bench.md): ``bf16`` or ``fp8`` at the paper's
protocol (ISL 512, OSL 128, the 8B at batch 32, the 4B models at batch 64, 3 runs after 1
warm-up, as benchmarks/throughput/run_gpu.sh), ``batch1-fp8`` / ``batch1-bf16`` at batch 1
(the latter the 8B alone); ``ratios`` reads whichever steps exist into ``OUT/ratios.json``.
``--tiny`` keeps the vocabulary and rope but shrinks every model to 2 or 1 layers of width
96-128 and the protocol to ISL 16, OSL 4, fp32 (a CPU check of the script's logic, not a
measurement).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from minitron_deploy.bench.api import BenchSettings, benchmark
from minitron_deploy.bench.models import ModelSpec, named_config
from minitron_deploy.bench.report import write_report
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.core.shape import ModelShape, reshaped_config

#: Named shape -> its label in the ratios.
MODELS = {"llama31-8b": "8B", "minitron-4b-width": "4B-Width", "minitron-4b-depth": "4B-Depth"}
#: The tiny stand-ins (hidden, ffn, heads, kv heads, layers, head_dim).
TINY = {"llama31-8b": ModelShape(128, 256, 4, 2, 2, 32),
        "minitron-4b-width": ModelShape(96, 192, 4, 2, 2, 32),
        "minitron-4b-depth": ModelShape(128, 256, 4, 2, 1, 32)}
#: The paper's max-throughput batch sizes.
PROTOCOL_BATCH = {"llama31-8b": 32, "minitron-4b-width": 64, "minitron-4b-depth": 64}
#: step -> (in-memory quantization, batch sizes from PROTOCOL_BATCH (else 1), models).
STEPS = {"bf16": (None, True, tuple(MODELS)), "fp8": ("fp8", True, tuple(MODELS)),
         "batch1-fp8": ("fp8", False, tuple(MODELS)),
         "batch1-bf16": (None, False, ("llama31-8b",))}
#: (numerator model, scheme, denominator model, scheme, goal).
RATIOS = (("4B-Width", "fp8", "8B", "bf16", 3.0),
          ("4B-Depth", "fp8", "8B", "fp8", 2.7),
          ("4B-Width", "fp8", "8B", "fp8", 1.8),
          ("8B", "fp8", "8B", "bf16", None),
          ("4B-Width", "fp8", "4B-Width", "bf16", None),
          ("4B-Depth", "fp8", "4B-Depth", "bf16", None))


def configs(work: Path, tiny: bool) -> None:
    """One folder holding only a config.json per model."""
    for name in MODELS:
        config = named_config(name)
        if tiny:
            config = reshaped_config(config, TINY[name])
        config.save_pretrained(str(work / name))


def bench(work: Path, out: Path, step: str, tiny: bool) -> None:
    """Time ``step`` (see the module docstring) and write its report into ``out/step``."""
    quantize, protocol, names = STEPS[step]
    models = [ModelSpec(str(work / name), (PROTOCOL_BATCH[name] if protocol else 1,))
              for name in names]
    small = {"isl": 16, "osl": 4, "reps": 1, "warmup": 0, "dtype": "fp32"}
    full = {"isl": 512, "osl": 128, "reps": 3, "warmup": 1, "dtype": "bf16"}
    settings = BenchSettings(models=models, max_throughput=protocol, quantize=quantize,
                             **(small if tiny else full))
    report = benchmark(settings, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    report["meta"] = {"command": f"gpu_models.py bench {step}" + (" --tiny" if tiny else "")}
    for path in write_report(report, out / step, plots=False):
        print(path)


def _speeds(out: Path) -> dict[tuple[str, str, str], dict]:
    """(batch kind, model label, scheme) -> the run, from every step's report."""
    found = {}
    for step in STEPS:
        path = out / step / "bench.json"
        if not path.is_file():
            continue
        for run in json.loads(path.read_text())["runs"]:
            kind = "batch 1" if step.startswith("batch1") else "max throughput"
            scheme = "fp8" if run["scheme"].startswith("fp8") else "bf16"
            found[(kind, MODELS[run["model"]], scheme)] = run
    return found


def ratios(out: Path) -> None:
    """Throughput ratios of the runs found, printed with their goals, into ``out/ratios.json``."""
    speeds, rows = _speeds(out), []
    for kind in ("max throughput", "batch 1"):
        for num, num_scheme, den, den_scheme, goal in RATIOS:
            a, b = speeds.get((kind, num, num_scheme)), speeds.get((kind, den, den_scheme))
            if a is None or b is None:
                continue
            value = a["metrics"]["output_tok_s"] / b["metrics"]["output_tok_s"]
            met = None if goal is None or kind == "batch 1" else value >= goal
            name = f"{num} {num_scheme} / {den} {den_scheme}"
            rows.append({"kind": kind, "ratio": name, "value": value, "goal": goal, "met": met,
                         "numerator": _brief(a), "denominator": _brief(b)})
            verdict = "" if met is None else f" (goal >= {goal}: {'met' if met else 'MISSED'})"
            print(f"{kind}: {name}: {value:.2f}x{verdict}")
    (out / "ratios.json").write_text(json.dumps({"ratios": rows}, indent=2) + "\n")


def _brief(run: dict) -> dict:
    return {k: run[k] for k in ("model", "scheme", "batch", "weight_bytes", "peak_memory_bytes")} \
        | {"output_tok_s": run["metrics"]["output_tok_s"], "itl_ms": run["metrics"]["itl_ms"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("configs")
    c.add_argument("work", type=Path)
    c.add_argument("--tiny", action="store_true")
    b = sub.add_parser("bench")
    b.add_argument("work", type=Path)
    b.add_argument("out", type=Path)
    b.add_argument("step", choices=list(STEPS))
    b.add_argument("--tiny", action="store_true")
    r = sub.add_parser("ratios")
    r.add_argument("out", type=Path)
    args = parser.parse_args()
    try:
        if args.cmd == "configs":
            configs(args.work, args.tiny)
        elif args.cmd == "bench":
            bench(args.work, args.out, args.step, args.tiny)
        else:
            ratios(args.out)
    except MinitronError as exc:
        sys.exit(f"gpu_models.py: error: {exc}")


if __name__ == "__main__":
    main()
