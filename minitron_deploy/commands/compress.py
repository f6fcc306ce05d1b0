"""``minitron compress``: the whole recipe in one command (prune, distill, export, eval,
bench), resumable, or ``--dry-run`` for the resolved plan with per-rank memory."""

from __future__ import annotations

import argparse

import yaml

from ..core.errors import MinitronError

_EXAMPLE = """example (the memory plan on 8 GPUs from the named shape, then the run; re-running
resumes):
  minitron compress --recipe llama31-8b-to-4b-width --dry-run --gpus 8 \\
      --device-memory-gb 80 --set teacher=llama31-8b
  torchrun --nproc-per-node 8 -m minitron_deploy.cli compress \\
      --recipe recipes/llama31-8b-to-4b-width.yaml"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="run a recipe end to end: prune, distill, export, "
                                        "eval, bench (resumable stages)", epilog=_EXAMPLE)
    p.add_argument("--recipe", required=True,
                   help="recipe YAML file, or a shipped recipe's name (demo, "
                        "llama31-8b-to-4b-width, llama31-8b-to-4b-depth, llama31-8b-iterative)")
    p.add_argument("--work-dir", help="stage outputs (default: out/<recipe name>)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, repeatable, e.g. --set distill.tokens=2e6 "
                        "--set device=cuda (default: the recipe as written)")
    p.add_argument("--dry-run", action="store_true",
                   help="print shapes, parameters and per-rank memory of every stage and "
                        "strategy, and the strategy distillation would use; run nothing")
    p.add_argument("--gpus", type=int, default=1,
                   help="ranks distillation will run on (torchrun --nproc-per-node), for "
                        "--dry-run (default 1)")
    p.add_argument("--device-memory-gb", type=float, metavar="GIB",
                   help="memory of one device in GiB for --dry-run (default: the device here)")
    p.set_defaults(func=run)


def parse_overrides(items: list[str]) -> dict:
    """``["distill.tokens=2e6"]`` -> ``{"distill.tokens": 2000000.0}`` (values parsed as YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MinitronError(f"--set takes KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f}"


#: Short column names of MemoryBreakdown's fields.
_COLUMNS = {"params": "params", "grads": "grads", "optimizer": "optim", "compute": "compute",
            "teacher": "teacher", "activations": "activ", "logits": "logits",
            "kl_chunks": "kl", "buckets": "buckets", "runtime": "runtime"}
_LEGEND = ("  compute: bf16 weight copies (single, ddp) or FSDP gather/reduce buffers; "
           "activ: saved activations;\n  kl: chunked-KL buffers; buckets: DDP gradient "
           "buckets; runtime: CUDA/NCCL workspaces, allocator slack; ckpt: activation "
           "checkpointing")


def format_plan(plans: list, device: str, world: int, available: int | None) -> str:
    """The stage summary, then every option of each prune and distill stage (GiB, per rank;
    ``*`` marks the one a run would use)."""
    rows = [f"{'stage':<22} {'params':>15} {'est. memory':>12}  detail"]
    for p in plans:
        rows.append(f"{p.name:<22} {p.params:>15,} {_gib(p.memory_bytes):>8} GiB  "
                    f"{p.detail}".rstrip())
    have = f"{_gib(available)} GiB" if available else "unknown memory (not present here)"
    rows.append(f"device {device}: {world} x {have}")
    for p in plans:
        if p.calibration:
            rows += ["", f"{p.name}: calibration on one device (GiB)",
                     f"  {'mode':<16} {'weights':>8} {'activ':>8} {'logits':>8} "
                     f"{'hidden':>8} {'total':>8}"]
            for mode, m in p.calibration.items():
                mark = "*" if p.memory_bytes in (m.total, m.total - m.hidden_states) else " "
                rows.append(f"{mark} {mode:<16} {_gib(m.weights):>8} {_gib(m.activations):>8} "
                            f"{_gib(m.logits):>8} {_gib(m.hidden_states):>8} {_gib(m.total):>8}")
            if "layer by layer" in p.calibration:
                rows.append("  hidden: every calibration sample's hidden states, in host "
                            "memory when they do not fit on the device")
        if p.choices:
            rows += ["", f"{p.name}: per rank, {world} rank{'s' if world > 1 else ''} (GiB)",
                     f"  {'strategy':<26} {'ckpt':>4} "
                     + " ".join(f"{n:>7}" for n in _COLUMNS.values()) + f" {'total':>7}  fits"]
            for c in p.choices:
                mark = "*" if c == p.chosen else " "
                fits = "?" if available is None else ("yes" if c.breakdown.total <= available
                                                      else "no")
                name = c.label.removesuffix(", activation checkpointing")
                ckpt = "on" if c.activation_checkpointing else "off"
                rows.append(f"{mark} {name:<26} {ckpt:>4} "
                            + " ".join(f"{_gib(v):>7}" for v in c.breakdown.as_dict().values())
                            + f" {_gib(c.breakdown.total):>7}  {fits}")
            rows.append(_LEGEND)
    return "\n".join(rows) + "\n"


def run(args: argparse.Namespace) -> None:
    from ..pipeline.recipe import load_recipe

    recipe = load_recipe(args.recipe, parse_overrides(args.set))
    work = args.work_dir or f"out/{recipe.name}"
    if args.dry_run:
        from ..core.devices import device_memory
        from ..pipeline.plan import GIB, check_fits, plan_recipe

        if args.gpus < 1:
            raise MinitronError(f"--gpus must be at least 1, got {args.gpus}")
        if args.device_memory_gb:
            available = int(args.device_memory_gb * GIB)
        else:  # ranks on the CPU share the machine's memory
            available = device_memory(recipe.device)
            if available and not recipe.device.startswith("cuda"):
                available //= args.gpus
        plans = plan_recipe(recipe, work, args.gpus, available)
        print(format_plan(plans, recipe.device, args.gpus, available), end="")
        check_fits(plans)
        return
    from ..core.dist import distributed_env
    from ..pipeline.run import run_pipeline, summary

    result = run_pipeline(recipe, work)
    if distributed_env().is_main:  # under torchrun every rank returns rank 0's result
        print(summary(result), end="")
