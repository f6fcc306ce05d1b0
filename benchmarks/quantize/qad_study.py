"""PTQ vs QAD at the same token budget on the demo student.

The demo's teacher (SmolLM2-135M, ``builtin:smollm2-135m``) is pruned to 0.9 of its
parameters as ``recipes/demo.yaml`` prunes it, then distilled twice on the demo's data with the
same tokens, schedule and seed:

(a) PTQ: KD in full precision, then ``quantize()`` int8-w8a8 (compressed-tensors);
(b) QAD: KD through the int8-w8a8 fake quantizers (``distill(quantize="int8-w8a8")``), which
    writes the same kind of checkpoint.

Held-out perplexity (``builtin:stdlib-docs-heldout``, ± standard error over sequences) of the
teacher, the pruned student, (a) before and after quantization, and (b); fp32 on the CPU.
Finished folders under ``--work`` are reused by a rerun.

    python benchmarks/quantize/qad_study.py --tokens 16384 --out benchmarks/quantize/results/qad.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from provenance import provenance

from minitron_deploy.data import assets
from minitron_deploy.distill.api import DistillConfig, distill
from minitron_deploy.eval.api import PPL, PPL_STDERR, evaluate
from minitron_deploy.pruning.api import prune
from minitron_deploy.quantize.api import quantize

TEACHER, DATA, HELDOUT = "builtin:smollm2-135m", "builtin:stdlib-docs", "builtin:stdlib-docs-heldout"
SCHEME = "int8-w8a8"
#: The demo recipe's prune section.
PRUNE = {"target_params": 0.9, "calib_samples": 64, "seq_len": 256, "batch_size": 8}
MODELS = ("teacher", "pruned", "distilled", "ptq", "qad")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=16384, help="KD tokens of each run")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4, help="the demo recipe's")
    p.add_argument("--ppl-seqs", type=int, default=32, help="held-out sequences scored")
    p.add_argument("--work", default="/tmp/minitron-qad-study")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "qad.json"))
    return p.parse_args()


def timed(seconds: dict, name: str, out: Path, make: Callable[[Path], object]) -> Path:
    """``make(out)`` unless ``out`` exists (a rerun), timed into ``seconds[name]``."""
    if not out.exists():
        t0 = time.perf_counter()
        make(out)
        seconds[name] = round(time.perf_counter() - t0, 1)
    return out


def main() -> None:
    args = parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    teacher = assets.resolve_checkpoint(TEACHER, work)
    data, heldout = assets.resolve(DATA, work), assets.resolve(HELDOUT, work)
    pruned = timed(seconds, "prune", work / "pruned",
                   lambda out: prune(teacher, out, calib=data, device="cpu", dtype="fp32",
                                     **PRUNE))
    kd = {"tokens": args.tokens, "seq_len": args.seq_len, "batch_size": args.batch_size,
          "lr": args.lr, "warmup_steps": 2, "checkpoint_every": 1000, "precision": "fp32",
          "device": "cpu"}
    losses: dict[str, dict] = {}

    def run_kd(out: Path, **extra) -> None:
        report = distill(teacher, pruned, data, out, DistillConfig(**kd, **extra))
        losses[out.name] = {"first": report.first_loss, "last": report.last_loss,
                            "steps": report.steps, "tokens": report.tokens}

    paths = {"teacher": teacher, "pruned": pruned,
             "distilled": timed(seconds, "distill", work / "distilled", run_kd),
             "qad": timed(seconds, "distill_qad", work / "qad",
                          lambda out: run_kd(out, quantize=SCHEME))}
    paths["ptq"] = timed(seconds, "quantize", work / "ptq",
                         lambda out: quantize(paths["distilled"], out, scheme=SCHEME,
                                              device="cpu", dtype="fp32"))
    results = {}
    for name in MODELS:
        t0 = time.perf_counter()
        metrics = evaluate(paths[name], [PPL], ppl_data=heldout, seq_len=args.seq_len,
                           ppl_seqs=args.ppl_seqs, device="cpu", dtype="fp32")
        seconds[f"eval_{name}"] = round(time.perf_counter() - t0, 1)
        results[name] = {"ppl": metrics[PPL], "ppl_stderr": metrics[PPL_STDERR]}
    record = {"command": "python " + " ".join(sys.argv), **provenance("cpu"),
              "setup": {"teacher": TEACHER, "data": DATA, "heldout": HELDOUT, "scheme": SCHEME,
                        "prune": PRUNE, "distill": kd, "ppl_seqs": args.ppl_seqs},
              "results": results, "kd_loss": losses, "seconds": seconds}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    for name in MODELS:
        print(f"{name:>9}: ppl {results[name]['ppl']:.2f} ± {results[name]['ppl_stderr']:.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
