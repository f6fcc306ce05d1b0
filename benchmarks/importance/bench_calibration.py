"""Cost of the calibration pass with all importance hooks vs a plain forward pass.

Both variants run the same batches in fresh subprocesses (so peak memory is per variant),
alternating, several repetitions; the report is the ratio of medians from one run.

    python benchmarks/importance/bench_calibration.py --shape small --device cpu
    python benchmarks/importance/bench_calibration.py --shape llama31-8b --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

SHAPES = {
    "small": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                  num_attention_heads=8, num_key_value_heads=2, vocab_size=32000),
    "llama31-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
}


def run_variant(args) -> dict:
    """One measurement in this process: seconds of the forward loop and peak memory."""
    from minitron_deploy.importance.depth import BlockImportanceCollector
    from minitron_deploy.importance.width import WidthCollector

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**SHAPES[args.shape]),
                                                 dtype=dtype).eval()
    batches = [torch.randint(0, 32000, (args.batch_size, args.seq_len), device=args.device)
               for _ in range(args.batches)]

    def loop():
        with torch.no_grad():
            for ids in batches:
                model(input_ids=ids, use_cache=False)
        if args.device == "cuda":
            torch.cuda.synchronize()

    def hooked_loop():
        width, blocks = WidthCollector(model), BlockImportanceCollector(model, (1,))
        with width.attached(), blocks.attached():
            loop()
        width.scores(), blocks.scores()

    run = hooked_loop if args.variant == "hooked" else loop
    run()  # warm-up with the measured variant: first kernel launches and allocations excluded
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if args.device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"seconds": seconds, "peak_bytes": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="small")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variant", choices=["plain", "hooked"], help=argparse.SUPPRESS)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return

    runs: dict[str, list[dict]] = {"plain": [], "hooked": []}
    child = sys.argv[1:]
    for _ in range(args.repeats):
        for variant in ("plain", "hooked"):
            out = subprocess.run([sys.executable, __file__, *child, "--variant", variant],
                                 capture_output=True, text=True, check=True)
            runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {v: {k: statistics.median(r[k] for r in rs) for k in ("seconds", "peak_bytes")}
           for v, rs in runs.items()}
    result = {
        "command": "python " + " ".join(["benchmarks/importance/bench_calibration.py", *child]),
        "date": date.today().isoformat(),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True, cwd=Path(__file__).parent).stdout.strip() or None,
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                   f"{torch.get_num_threads()} threads"
                   + (f", {torch.cuda.get_device_name()}" if args.device == "cuda" else ""),
        "torch": torch.__version__,
        "settings": {k: v for k, v in vars(args).items() if k not in ("variant", "out")},
        "median": med,
        "time_ratio": med["hooked"]["seconds"] / med["plain"]["seconds"],
        "memory_ratio": med["hooked"]["peak_bytes"] / med["plain"]["peak_bytes"],
        "runs": runs,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"calibration_{args.shape}_{args.device}_{args.dtype}.json"
    (out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(f"time ratio {result['time_ratio']:.3f}, peak memory ratio {result['memory_ratio']:.3f}"
          f" -> {out / name}")


if __name__ == "__main__":
    main()
