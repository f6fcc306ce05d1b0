"""Measured peak memory of CPU distillation against the memory planner (``minitron_deploy.distill.memory``).

Each configuration runs the real ``minitron_deploy.distill.api.distill`` in a fresh process
(two gloo ranks under ``torch.distributed.run`` for DDP and FSDP) on a small random Llama
teacher/student pair built here. What is compared:

- measured: rank 0's peak RSS (``VmHWM``) over the training steps after the first, minus its
  RSS just before ``distill()`` was called (after the imports, the process group and a warm-up
  matmul). The peak mark is reset (``/proc/self/clear_refs``) when the first step ends, so
  model loading and the checkpoint written after the last step are not in it; steps 2.. are
  steady state (AdamW states exist, gradients are rebuilt every step). The baseline is taken
  before any model is loaded because the planner predicts the whole per-rank footprint of
  distillation, models included.
- predicted: ``distill_memory`` for the strategy, teacher placement and checkpointing the run
  reports in ``distill.json`` (``layout``), with ``gpu=False``.
- step time: the median wall time of the steps after the first (rank 0's log), and its ratio
  to the first run of the same invocation (compare only within one run: machines are noisy).

``--device cuda`` measures on a GPU instead (``torch.cuda.max_memory_allocated`` after the
first step, bf16 compute, models on the GPU): ``--only single "fsdp, 1 rank"`` gives the cost
of FSDP on one GPU against the single-process step on the same batch.

glibc's malloc keeps freed blocks below its dynamic mmap threshold (up to 32 MiB) in the heap,
so RSS would include memory that is free for the next allocation; the workers run with
``MALLOC_MMAP_THRESHOLD_`` fixed at 1 MiB so that tensors are returned on free and RSS follows
live tensors, as GPU memory accounting does (``--default-malloc`` measures without it).

    python benchmarks/distill/bench_memory.py --out benchmarks/distill/results/memory-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

#: Teacher and (width-pruned shape) student: Llama, untied embeddings, 16k vocabulary.
TEACHER = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
               num_attention_heads=8, num_key_value_heads=4, head_dim=64, vocab_size=16000)
STUDENT = dict(TEACHER, hidden_size=384, intermediate_size=1024)
#: ``--shape 1b``: a ~1B teacher and its width-pruned student, for GPU step times.
TEACHER_1B = dict(TEACHER, hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128)
STUDENT_1B = dict(TEACHER_1B, hidden_size=1536, intermediate_size=4096)
SHAPES = {"small": (TEACHER, STUDENT), "1b": (TEACHER_1B, STUDENT_1B)}
#: name -> DistillConfig settings and ranks.
RUNS = {
    "single": ({"strategy": "single"}, 1),
    "single, activation checkpointing": ({"strategy": "single",
                                          "activation_checkpointing": True}, 1),
    "ddp": ({"strategy": "ddp"}, 2),
    "fsdp, teacher replicated": ({"strategy": "fsdp", "teacher_sharding": "replicate"}, 2),
    "fsdp, teacher sharded": ({"strategy": "fsdp", "teacher_sharding": "shard"}, 2),
    "fsdp, teacher sharded, activation checkpointing": (
        {"strategy": "fsdp", "teacher_sharding": "shard", "activation_checkpointing": True}, 2),
    "fsdp, 1 rank": ({"strategy": "fsdp", "teacher_sharding": "replicate"}, 1),
}
MIB = 1 << 20


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status (Linux only)")


def build_models(root: Path, shape: str) -> None:
    """Random teacher and student checkpoints sharing a 16k-word tokenizer, and their text."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"w{i}": i for i in range(3, TEACHER["vocab_size"])})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                        bos_token="<s>", eos_token="</s>")
    for name, dims in zip(("teacher", "student"), SHAPES[shape]):
        torch.manual_seed(0)
        config = LlamaConfig(**dims, max_position_embeddings=1024, tie_word_embeddings=False,
                             bos_token_id=1, eos_token_id=2)
        LlamaForCausalLM(config).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    rng = random.Random(0)
    lines = (" ".join(f"w{rng.randrange(3, TEACHER['vocab_size'])}" for _ in range(200))
             for _ in range(400))
    (root / "train.txt").write_text("\n".join(lines) + "\n")


def worker(args) -> None:
    """One run of ``distill`` (one rank); rank 0 writes what it measured to ``args.result``."""
    import torch

    from minitron_deploy.core.dist import distributed_env
    from minitron_deploy.distill.api import DistillConfig, distill

    distributed_env()  # the process group (gloo on CPU, NCCL on GPU) before the baseline
    gpu = args.device == "cuda"
    torch.ones(256, 256) @ torch.ones(256, 256)  # thread pools and kernels up before the mark
    baseline = torch.cuda.memory_allocated() if gpu else _status_kb("VmRSS") * 1024
    seen: dict[str, int] = {}
    elapsed: list[float] = []

    def on_step(record: dict) -> None:
        if record["step"] == 1:
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            else:
                Path("/proc/self/clear_refs").write_text("5")  # peak mark := current RSS
        seen["peak"] = torch.cuda.max_memory_allocated() if gpu else _status_kb("VmHWM") * 1024
        elapsed.append(record["elapsed_s"])

    settings = json.loads(args.settings)
    cfg = DistillConfig(steps=args.steps, seq_len=args.seq_len, batch_size=args.batch,
                        checkpoint_every=args.steps, lr=1e-4, device=args.device, **settings)
    root = Path(args.models)
    out = Path(args.result).with_suffix("")
    distill(root / "teacher", root / "student", root / "train.txt", out, cfg, on_step=on_step)
    if "peak" in seen:  # rank 0
        layout = json.loads(next(out.rglob("distill.json")).read_text())["layout"]
        steps = sorted(b - a for a, b in zip(elapsed, elapsed[1:]))
        Path(args.result).write_text(json.dumps({"baseline": baseline, "peak": seen["peak"],
                                                 "layout": layout,
                                                 "step_s": steps[len(steps) // 2]}))


def predict(run: dict, args) -> dict[str, int]:
    from minitron_deploy.arch.modeling import load_config
    from minitron_deploy.distill.api import DistillConfig
    from minitron_deploy.distill.memory import distill_memory

    root = Path(args.models)
    layout = run["layout"]
    cfg = DistillConfig(steps=args.steps, seq_len=args.seq_len, batch_size=args.batch)
    breakdown = distill_memory(load_config(root / "teacher"), load_config(root / "student"),
                               cfg, run["world"], layout["strategy"], gpu=args.device == "cuda",
                               teacher_sharded=layout["shard_teacher"],
                               activation_checkpointing=layout["activation_checkpointing"])
    return breakdown.as_dict() | {"total": breakdown.total}


def measure(name: str, args, tmp: Path) -> dict:
    settings, world = RUNS[name]
    result = tmp / f"run-{len(list(tmp.glob('run-*')))}.json"
    script = [str(Path(__file__).resolve()), "--worker", "--models", args.models,
              "--settings", json.dumps(settings), "--result", str(result),
              "--steps", str(args.steps), "--batch", str(args.batch),
              "--seq-len", str(args.seq_len), "--device", args.device]
    launcher = [sys.executable] if settings["strategy"] == "single" else [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world),
        "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if not args.default_malloc:
        env["MALLOC_MMAP_THRESHOLD_"] = str(MIB)
    done = subprocess.run(launcher + script, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    run = json.loads(result.read_text()) | {"name": name, "world": world}
    run["predicted"] = predict(run, args)
    run["measured"] = run["peak"] - run["baseline"]
    run["error"] = run["predicted"]["total"] / run["measured"] - 1
    print(f"{name:<50} measured {run['measured'] / MIB:7.0f} MiB  predicted "
          f"{run['predicted']['total'] / MIB:7.0f} MiB  ({run['error']:+.1%})  "
          f"step {run['step_s']:.3f} s", flush=True)
    return run


def markdown(runs: list[dict]) -> str:
    head = ("| run | ranks | measured (MiB) | predicted (MiB) | error | step (s) | step ratio | "
            "params+grads+optim | compute | teacher | activations | logits+KL | buckets |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    rows = []
    for r in runs:
        p = {k: v / MIB for k, v in r["predicted"].items()}
        rows.append(f"| {r['name']} | {r['world']} | {r['measured'] / MIB:.0f} | "
                    f"{p['total']:.0f} | {r['error']:+.1%} | {r['step_s']:.3f} | "
                    f"{r['step_s'] / runs[0]['step_s']:.2f} | "
                    f"{p['params'] + p['grads'] + p['optimizer']:.0f} | {p['compute']:.0f} | "
                    f"{p['teacher']:.0f} | {p['activations']:.0f} | "
                    f"{p['logits'] + p['kl_chunks']:.0f} | {p['buckets']:.0f} |")
    return head + "\n".join(rows) + "\n"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=sorted(RUNS), help="runs to measure (default all)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--shape", choices=sorted(SHAPES), default="small")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's dynamic mmap threshold on")
    p.add_argument("--out", type=Path)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--models", help=argparse.SUPPRESS)
    p.add_argument("--settings", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        args.models = str(Path(tmp) / "models")
        build_models(Path(args.models), args.shape)
        runs = [measure(name, args, Path(tmp)) for name in (args.only or RUNS)]
    report = {"command": " ".join(["python"] + sys.argv), "date": date.today().isoformat(),
              "commit": git_commit(), "machine": f"{cpu_model()}, {os.cpu_count()} cores, "
              + (f"{torch.cuda.get_device_name()}, " if args.device == "cuda" else "") +
              f"torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}",
              "settings": {"device": args.device, "steps": args.steps, "batch": args.batch,
                           "seq_len": args.seq_len,
                           "teacher": SHAPES[args.shape][0], "student": SHAPES[args.shape][1],
                           "malloc_mmap_threshold": None if args.default_malloc else MIB},
              "runs": runs}
    print(markdown(runs), end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
