"""``minitron compress --dry-run``: the resolved plan of a recipe (shapes, parameter counts,
estimated peak memory per stage) and a refusal when a stage cannot fit the device."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from . import assets
from .errors import MinitronError
from .modeling import load_config
from .pipeline import target_spec
from .recipe import Recipe
from .shape import ModelShape, count_params, reshaped_config
from .target import resolve_target

GIB = 1024**3


@dataclass
class StagePlan:
    name: str
    detail: str
    params: int
    memory_bytes: int


def device_memory(device: str) -> int | None:
    """Total memory of ``device`` (GPU memory, or the machine's RAM for the CPU); None if the
    device is not present here."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return None
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def _distill_bytes(teacher: int, student: int, vocab: int, tokens: int, chunk: int,
                   gpu: bool) -> int:
    """Frozen teacher (bf16 on GPU), fp32 student with grads and AdamW moments (16 B/param),
    both models' logits for one micro-batch plus the student's gradient, KL chunk buffers."""
    act = 2 if gpu else 4
    return teacher * act + student * 16 + 3 * tokens * vocab * act + 4 * chunk * vocab * 4


def plan_recipe(recipe: Recipe, work_dir: str | Path) -> list[StagePlan]:
    """Resolve every round's target shape from the teacher's config and estimate memory."""
    config = load_config(assets.resolve(recipe.teacher, Path(work_dir)))
    teacher_params = count_params(config)
    gpu = recipe.device.startswith("cuda")
    plans: list[StagePlan] = []
    for i, rnd in enumerate(recipe.rounds()):
        source_params = count_params(config)
        target = resolve_target(config, target_spec(rnd.prune))
        shape = target.shape
        plans.append(StagePlan(f"round {i + 1} prune", f"{ModelShape.from_config(config)} -> "
                               f"{shape}: {target.reason}", target.params_after,
                               source_params * 4))
        d = rnd.distill
        tokens = d.batch_size * d.seq_len
        plans.append(StagePlan(f"round {i + 1} distill",
                               f"{d.tokens or d.steps} {'tokens' if d.tokens else 'steps'}, "
                               f"micro-batch {d.batch_size}x{d.seq_len}", target.params_after,
                               _distill_bytes(source_params, target.params_after,
                                              config.vocab_size, tokens, d.chunk_tokens, gpu)))
        config = reshaped_config(config, shape)
    final = count_params(config)
    for spec in recipe.export:
        plans.append(StagePlan(f"export {spec.format} {spec.dtype} tp{spec.tp}", "", final,
                               final * 4))
    plans.append(StagePlan("eval", ", ".join(recipe.eval.tasks), final, teacher_params * 4))
    return plans


def check_fits(plans: list[StagePlan], device: str, available: int | None) -> None:
    """Refuse the plan when a stage's estimate exceeds the device's memory."""
    if available is None:
        return
    for plan in plans:
        if plan.memory_bytes > available:
            raise MinitronError(f"{plan.name} needs about {plan.memory_bytes / GIB:.1f} GiB but "
                                f"{device} has {available / GIB:.1f} GiB; lower the micro-batch "
                                "or sequence length, or use a larger device")


def format_plan(plans: list[StagePlan], device: str, available: int | None) -> str:
    rows = [f"{'stage':<26} {'params':>15} {'est. memory':>12}  detail"]
    for p in plans:
        rows.append(f"{p.name:<26} {p.params:>15,} {p.memory_bytes / GIB:>9.1f} GiB  {p.detail}")
    have = f"{available / GIB:.1f} GiB" if available else "unknown (device not present here)"
    rows.append(f"device {device}: {have}")
    return "\n".join(rows) + "\n"
