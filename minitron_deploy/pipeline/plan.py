"""``minitron compress --dry-run``'s plan of a whole recipe: each stage's shapes and per-rank
memory (calibration here; distillation from ``distill/memory.py``), the quantized student's
predicted weight bytes on disk (``quantize/schemes.py``), and the refusal of a plan that cannot
fit. A mixture-of-experts teacher's prune stage states total and active parameters and the
routed experts' weights before and after.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..arch import get_adapter
from ..arch.modeling import load_config
from ..bench.models import NAMED_SHAPES, named_config, named_shape_of
from ..core.errors import MinitronError
from ..core.hub import resolve_model
from ..core.shape import ModelShape, ParamCounts, count_params, reshaped_config
from ..data import assets
from ..distill.config import DistillConfig
from ..distill.memory import GIB, Choice, ModelSizes, options, pick
from ..importance.layerwise import STREAMABLE_CRITERIA
from ..pruning.settings import PruneSettings
from ..pruning.target import resolve_target
from ..quantize.schemes import weight_bytes
from .recipe import Recipe


@dataclass(frozen=True)
class CalibrationMemory:
    """Device memory of importance calibration (forward only), in bytes."""

    weights: int
    activations: int
    logits: int
    hidden_states: int  # layer by layer: every calibration sample's hidden states

    @property
    def total(self) -> int:
        return self.weights + self.activations + self.logits + self.hidden_states


def calibration_memory(model: ModelSizes, prune: PruneSettings,
                       layerwise: bool) -> CalibrationMemory:
    """Whole model: fp32 weights on the device. Layer by layer: one decoder layer (or the
    embeddings or LM head, whichever is larger) at a time, plus the hidden states of every
    calibration sample twice (kept and running states of the depth pass; they wait in host
    memory when they do not fit). Both: one batch's widest intermediates and its logits with
    the loss's log-softmax, in fp32."""
    tokens = prune.batch_size * prune.seq_len
    per_token = 2 * model.hidden + model.q_width + 2 * model.kv_width + 3 * model.ffn
    weights = max(model.layer_params, model.vocab * model.hidden) if layerwise else model.params
    return CalibrationMemory(
        weights=4 * weights, activations=4 * tokens * per_token,
        logits=2 * 4 * tokens * model.vocab,
        hidden_states=2 * 4 * prune.calib_samples * prune.seq_len * model.hidden
        if layerwise else 0)


@dataclass
class StagePlan:
    """One stage of a recipe: what it makes, its per-rank memory, the weight bytes it writes
    where predicted (quantize), and for prune and distill every way of running it that was
    considered."""

    name: str
    detail: str
    params: int
    memory_bytes: int
    disk_bytes: int | None = None
    choices: list[Choice] | None = None
    chosen: Choice | None = None
    calibration: dict[str, CalibrationMemory] | None = None
    refusal: str | None = None
    #: Mixture-of-experts prune stages: total, active and routed-expert parameters made.
    counts: ParamCounts | None = None


def moe_detail(before: ParamCounts, after: ParamCounts) -> str:
    """Total and active parameters and the routed experts' 16-bit weights, before -> after."""
    return (f"total {before.total:,} -> {after.total:,} parameters, active {before.active:,} "
            f"-> {after.active:,}, routed experts {2 * before.experts / GIB:.2f} -> "
            f"{2 * after.experts / GIB:.2f} GiB in bf16")


def _prune_plan(name: str, source, rnd, available: int | None,
                gpu: bool) -> tuple[StagePlan, object]:
    """Whole-model calibration when it fits, else (on GPU, for the criteria that stream)
    layer by layer, as ``prune``'s ``offload="auto"`` decides at run time. A search is
    planned at its candidate closest to the target."""
    spec = rnd.prune
    if spec.search is not None:
        from ..search import plan_search
        from ..search.rank import shape_spec

        spec = shape_spec(plan_search(source, spec.search).candidates[0], spec.search.align)
    target = resolve_target(source, spec)
    sizes = ModelSizes.from_config(source)
    calibration = {"whole model": calibration_memory(sizes, rnd.prune, layerwise=False)}
    if gpu and rnd.prune.criterion in STREAMABLE_CRITERIA \
            and rnd.prune.depth_metric != "accuracy":
        calibration["layer by layer"] = calibration_memory(sizes, rnd.prune, layerwise=True)
    memory = calibration["whole model"].total
    layerwise = calibration.get("layer by layer")
    if available is not None and memory > available and layerwise is not None:
        memory = (layerwise.total if layerwise.total <= available
                  else layerwise.total - layerwise.hidden_states)  # hidden states in host memory
    refusal = None if available is None or memory <= available else (
        f"{name} needs about {memory / GIB:.1f} GiB but the device has {available / GIB:.1f} "
        "GiB; lower the calibration batch size or sequence length")
    detail = f"{ModelShape.from_config(source)} -> {target.shape}: {target.reason}"
    student = reshaped_config(source, target.shape)
    if target.experts is not None:
        detail += f"; {moe_detail(target.counts_before, target.counts_after)}"
        get_adapter(source).apply_expert_shape(student, target.experts)
    plan = StagePlan(name, detail, target.params_after, memory, calibration=calibration,
                     refusal=refusal, counts=target.counts_after if target.experts else None)
    return plan, student


def _distill_plan(name: str, teacher, student, cfg: DistillConfig, world: int,
                  available: int | None, gpu: bool) -> StagePlan:
    t_sizes, s_sizes = ModelSizes.from_config(teacher), ModelSizes.from_config(student)
    choices = options(t_sizes, s_sizes, cfg, world, gpu)
    chosen, refusal = None, None
    if available is not None:
        try:
            chosen = pick(t_sizes, s_sizes, cfg, world, available, gpu)
        except MinitronError as exc:
            refusal = f"{name.removesuffix(' distill')} {exc}"
    shown = chosen or (choices[0] if available is None
                       else min(choices, key=lambda c: c.breakdown.total))
    detail = (f"{cfg.tokens or cfg.steps} {'tokens' if cfg.tokens else 'steps'}, micro-batch "
              f"{cfg.batch_size}x{cfg.seq_len}, {shown.label}")
    return StagePlan(name, detail, s_sizes.params, shown.breakdown.total, choices=choices,
                     chosen=chosen, refusal=refusal)


def teacher_config(ref: str, work_dir: Path):
    """The teacher's config for a plan, without weights: a named shape's (``llama31-8b``,
    nothing read), a built-in's, a folder's, or a Hub id's ``config.json`` alone from the
    Hugging Face cache (fetched unless offline). A teacher that cannot be read is refused in
    one line naming the shape a dry run can plan with instead."""
    if ref in NAMED_SHAPES:
        return named_config(ref)
    if ref.startswith(assets.BUILTIN):
        return load_config(assets.resolve_checkpoint(ref, work_dir))
    try:
        return load_config(resolve_model(ref, only=("config.json",)))
    except MinitronError as exc:
        shape = named_shape_of(ref) or f"NAME (a named shape: {', '.join(NAMED_SHAPES)})"
        raise MinitronError(f"{exc}; for a dry run without it: --set teacher={shape}") from None


def plan_recipe(recipe: Recipe, work_dir: str | Path, world: int = 1,
                available: int | None = None) -> list[StagePlan]:
    """Every stage of ``recipe``: shapes resolved from the teacher's config (a named shape
    of ``minitron bench`` too, see :func:`teacher_config`), per-rank memory for ``world``
    ranks of ``available`` bytes (None: unknown, nothing is chosen or refused).
    Pruning, export and evaluation run on one device; distillation on every rank."""
    config = teacher_config(recipe.teacher, Path(work_dir))
    teacher_params = count_params(config)
    gpu = recipe.device.startswith("cuda")
    plans: list[StagePlan] = []
    for i, rnd in enumerate(recipe.rounds()):
        prune, student = _prune_plan(f"round {i + 1} prune", config, rnd, available, gpu)
        plans.append(prune)
        plans.append(_distill_plan(f"round {i + 1} distill", config, student, rnd.distill,
                                   world, available, gpu))
        config = student
    final = count_params(config)
    for spec in recipe.export:
        plans.append(StagePlan(f"export {spec.format} {spec.dtype} tp{spec.tp}", "", final,
                               final * 4))
    if recipe.quantize is not None:
        q = recipe.quantize
        disk = weight_bytes(config, q.scheme, q.resolved_format())
        written = f"{q.scheme} ({q.resolved_format()}): {disk / GIB:.2f} GiB of weights on disk " \
            "(predicted)"
        if q.qad:  # no stage of its own: the last distillation writes the quantized student
            last = next(p for p in reversed(plans) if p.name.endswith("distill"))
            last.name += " (QAD)"
            last.detail = "; ".join(filter(None, (last.detail, f"writes {written}")))
            last.disk_bytes = disk
        else:  # the fp32 student loaded, as export loads it
            plans.append(StagePlan("quantize", written, final, final * 4, disk_bytes=disk))
    plans.append(StagePlan("eval", ", ".join(recipe.eval.tasks), final, teacher_params * 4))
    for plan in plans:
        if plan.refusal is None and available is not None and plan.memory_bytes > available:
            plan.refusal = (f"{plan.name} needs about {plan.memory_bytes / GIB:.1f} GiB but the "
                            f"device has {available / GIB:.1f} GiB")
    return plans


def check_fits(plans: list[StagePlan]) -> None:
    """Refuse the plan with the first stage that cannot fit."""
    for plan in plans:
        if plan.refusal:
            raise MinitronError(plan.refusal)
