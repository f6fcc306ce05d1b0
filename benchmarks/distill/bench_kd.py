"""KD step cost and KL-loss memory.

1. Throughput: one KD training step (teacher forward + student forward/backward + chunked KL +
   AdamW step) against the sum of a plain student LM training step and a teacher forward on
   the same batch. Goal: KD overhead <= 15%. Steps are timed in one process, interleaved,
   median of ``--repeats``.
2. Memory: peak memory of the chunked KL (value + gradient) against the unchunked reference
   (``F.kl_div`` on full fp32 log-softmaxes with autograd) on random logits at a 128k
   vocabulary. On GPU: ``torch.cuda.max_memory_allocated`` above the inputs; on CPU: the peak
   RSS (Linux VmHWM, reset through /proc/self/clear_refs) above the RSS with the inputs, in a
   fresh subprocess per variant.

    python benchmarks/distill/bench_kd.py --device cpu --shape small --out results/cpu.json
    python benchmarks/distill/bench_kd.py --device cuda --shape 1b --out results/h100.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from minitron_deploy.distill.losses import logit_kd_loss  # noqa: E402
from minitron_deploy.distill.objectives import KDObjective, LMObjective, autocast_for  # noqa: E402

#: (teacher overrides, student overrides) on a Llama config; the student is a width-pruned shape.
SHAPES = {
    "small": (dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2, vocab_size=32000),
              dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2, vocab_size=32000)),
    "1b": (dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
           dict(hidden_size=1536, intermediate_size=6144, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)),
}


def build(overrides: dict, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(head_dim=64, max_position_embeddings=4096, tie_word_embeddings=False,
                         **overrides)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(args) -> dict:
    """Median seconds of: KD step, student LM step, teacher forward (interleaved)."""
    t_over, s_over = SHAPES[args.shape]
    teacher = build(t_over, args.device).eval().requires_grad_(False)
    if args.device.startswith("cuda"):
        teacher = teacher.bfloat16()
    student = build(s_over, args.device)
    kd = KDObjective(student, teacher, chunk_tokens=args.chunk_tokens)
    lm = LMObjective(student, chunk_tokens=args.chunk_tokens)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5)
    ids = torch.randint(0, t_over["vocab_size"], (args.batch, args.seq),
                        generator=torch.Generator().manual_seed(0)).to(args.device)
    device = torch.device(args.device)

    def train_step(objective):
        with autocast_for(device, "auto"):
            objective(ids).total.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def teacher_forward():
        with torch.no_grad(), autocast_for(device, "auto"):
            teacher(input_ids=ids, use_cache=False)

    runs = {"kd_step": lambda: train_step(kd), "student_step": lambda: train_step(lm),
            "teacher_forward": teacher_forward}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for rep in range(args.repeats + 1):
        for name, fn in runs.items():
            sync(args.device)
            t0 = time.perf_counter()
            fn()
            sync(args.device)
            if rep:  # the first round is warm-up
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    tokens = args.batch * args.seq
    return {"median_s": med, "all_s": times,
            "kd_tokens_per_s": tokens / med["kd_step"],
            "baseline_tokens_per_s": tokens / (med["student_step"] + med["teacher_forward"]),
            "kd_overhead": med["kd_step"] / (med["student_step"] + med["teacher_forward"]) - 1}


def loss_peak(variant: str, args) -> float:
    """Peak bytes of one loss value + gradient above the inputs, for ``variant``."""
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    shape = (args.batch, args.seq, args.vocab)
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(shape, generator=gen).to(args.device, dtype).requires_grad_()
    teacher = torch.randn(shape, generator=gen).to(args.device, dtype)
    base = current_bytes(args.device)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    if variant == "chunked":
        logit_kd_loss(student, teacher, chunk_tokens=args.chunk_tokens).total.backward()
    else:
        log_q = F.log_softmax(student.float(), -1)
        log_p = F.log_softmax(teacher.float(), -1)
        (F.kl_div(log_q.flatten(0, 1), log_p.flatten(0, 1), log_target=True,
                  reduction="batchmean")).backward()
    sync(args.device)
    return peak_bytes(args.device) - base


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status (Linux only)")


def current_bytes(device: str) -> int:
    """Bytes in use now; on CPU also resets the peak-RSS mark."""
    if device.startswith("cuda"):
        return torch.cuda.memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kb("VmRSS") * 1024


def peak_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated()
    return _status_kb("VmHWM") * 1024


def memory(args) -> dict:
    out = {}
    for variant in ("chunked", "unchunked"):
        if args.device.startswith("cuda"):
            out[variant] = loss_peak(variant, args)
            torch.cuda.empty_cache()
        else:  # a fresh process each, so RSS peaks do not mix
            cmd = [sys.executable, __file__, "--loss-only", variant, "--device", args.device,
                   "--batch", str(args.batch), "--seq", str(args.seq), "--vocab", str(args.vocab),
                   "--chunk-tokens", str(args.chunk_tokens)]
            out[variant] = int(subprocess.run(cmd, capture_output=True, text=True,
                                              check=True).stdout.split()[-1])
    out["ratio_unchunked_over_chunked"] = out["unchunked"] / max(1, out["chunked"])
    out["logits_shape"] = [args.batch, args.seq, args.vocab]
    return out


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--shape", choices=sorted(SHAPES), default="small")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--vocab", type=int, default=128256, help="vocabulary of the memory test")
    p.add_argument("--chunk-tokens", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--loss-only", choices=["chunked", "unchunked"], help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.loss_only:
        print(loss_peak(args.loss_only, args))
        return
    result = {"command": " ".join([Path(sys.executable).name] + sys.argv),
              "date": date.today().isoformat(), "commit": git_commit(),
              "machine": torch.cuda.get_device_name() if args.device.startswith("cuda")
              else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
              "torch": torch.__version__, "settings": vars(args) | {"out": str(args.out)},
              "throughput": time_steps(args), "memory": memory(args)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
