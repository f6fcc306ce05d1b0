"""Every scheme this CPU writes, on the SmolLM2-135M teacher and the demo's pruned student:
weight bytes on disk, held-out perplexity with its standard error, and three zero-shot tasks.

    PYTHONPATH=benchmarks .venv/bin/python benchmarks/quantize/study.py \
        --work /tmp/minitron-quantize-study --limit 100 \
        --out benchmarks/quantize/results/study.json

The student is the demo recipe's prune (``target_params: 0.9``, its calibration settings) of
the teacher, without distillation. Schemes a model cannot take (fp8-block and w4a16 need
128-divisible widths) are recorded with their one-line refusal. Everything runs on the CPU in
fp32; quantized folders are deleted once evaluated.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from provenance import provenance

from minitron_deploy.core.errors import MinitronError
from minitron_deploy.data.assets import resolve, resolve_checkpoint
from minitron_deploy.eval.api import PPL, evaluate
from minitron_deploy.pruning.api import prune
from minitron_deploy.quantize import quantize
from minitron_deploy.quantize.api import weight_bytes

#: (scheme, format) in the order of the table; None, None is the unquantized model.
VARIANTS = [(None, None), ("int8-w8a8", None), ("fp8", None), ("fp8", "modelopt"),
            ("fp8-block", None), ("w4a16", None), ("gguf-q8_0", None), ("gguf-q4_0", None)]
TASKS = ["arc_easy", "piqa", "hellaswag"]
#: The demo recipe's prune (recipes/demo.yaml).
PRUNE = {"target_params": 0.9, "calib_samples": 64, "seq_len": 256, "batch_size": 8}
CALIB = {"calib_samples": 64, "seq_len": 256, "batch_size": 8, "device": "cpu",
         "dtype": "fp32"}


def score(model: Path, held: Path, args: argparse.Namespace) -> dict:
    return evaluate(model, [PPL, *TASKS], args.limit, held, args.seq_len, args.ppl_seqs,
                    device="cpu", dtype="fp32")


def variant(model: Path, scheme: str | None, fmt: str | None, calib: Path, held: Path,
            args: argparse.Namespace) -> dict:
    """One row: the model as it is, or quantized by ``scheme`` (refusals recorded)."""
    start = time.perf_counter()
    if scheme is None:
        return {"scheme": "fp32", "format": "hf", "weight_bytes": weight_bytes(model),
                "results": score(model, held, args), "seconds": time.perf_counter() - start}
    out = args.work / f"{model.name}-{scheme}-{fmt or 'default'}"
    shutil.rmtree(out, ignore_errors=True)
    try:
        report = quantize(model, out, scheme=scheme, format=fmt, calib=calib, **CALIB)
    except MinitronError as exc:
        return {"scheme": scheme, "format": fmt, "refused": str(exc)}
    results = score(out, held, args)
    shutil.rmtree(out)
    return {"scheme": scheme, "format": report.format, "weight_bytes": report.bytes_after,
            "results": results, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/minitron-quantize-study"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results"
                        / "study.json")
    parser.add_argument("--limit", type=int, default=100, help="items per task")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--ppl-seqs", type=int, default=32)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    teacher = resolve_checkpoint("builtin:smollm2-135m", args.work)
    calib = resolve("builtin:stdlib-docs", args.work)
    held = resolve("builtin:stdlib-docs-heldout", args.work)
    student = args.work / "student-0.9"
    if not (student / "config.json").is_file():
        prune(teacher, student, calib=calib, device="cpu", dtype="fp32", **PRUNE)
    rows = {}
    for model in (teacher, student):
        rows[model.name] = []
        for scheme, fmt in VARIANTS:
            row = variant(model, scheme, fmt, calib, held, args)
            rows[model.name].append(row)
            print(json.dumps({"model": model.name, **row}), flush=True)
            write_record(args, rows, started, complete=False)
    write_record(args, rows, started, complete=True)
    print(f"wrote {args.out}")


def write_record(args, rows: dict, started: float, complete: bool) -> None:
    """The results so far (rewritten after each row, so a stopped run keeps what it measured)."""
    record = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
              "complete": complete,
              "settings": {"limit": args.limit, "seq_len": args.seq_len,
                           "ppl_seqs": args.ppl_seqs, "prune": PRUNE, "calib": CALIB},
              "seconds": time.perf_counter() - started, **provenance("cpu"), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
