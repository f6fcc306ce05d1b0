"""``minitron compress``: prune -> distill (one or more rounds) -> export -> quantize ->
evaluate -> benchmark, driven by a recipe, as resumable stages (``stages.py``). Each stage
writes its own output under the work dir plus a manifest; a re-run skips stages whose
settings and inputs are unchanged, and an interrupted distillation resumes from its last
checkpoint. A final report (``report.md``, ``report.json``, ``report.png``) puts teacher and
students (the quantized one too) side by side.

Under ``torchrun`` distillation runs data parallel on every rank; asset resolution, pruning,
export, evaluation, benchmarking and the report run on rank 0 while the other ranks wait."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..arch.modeling import atomic_dir, load_config
from ..arch.quantized import load_problem
from ..bench.models import NAMED_SHAPES
from ..core.artifacts import artifact_path
from ..core.dist import on_main_rank
from ..core.errors import MinitronError
from ..core.files import write_json_atomic, write_text_atomic
from ..core.shape import count_params
from ..data import assets
from ..distill.api import distill, work_dir_for
from ..eval.api import PPL, evaluate, metric_names, write_results
from ..eval.retention import Retention, chance_accuracy, retention
from ..pruning.api import prune
from ..pruning.report import print_prune_summary
from ..quantize.api import QUANTIZE_RECORD, quantize, weight_bytes
from ..quantize.schemes import get_scheme
from ..quantize.settings import QuantizeSettings
from .recipe import BenchStage, ExportStage, Iteration, Recipe
from .report_plot import plot_comparison
from .report_table import comparison_table
from .stages import Stage

RESULTS = "results.json"
#: The quantized student's folder under the work dir, and its name in the results.
QUANTIZED = "quantized"


@dataclass
class PipelineResult:
    teacher: Path
    pruned: Path
    distilled: Path
    eval_dir: Path
    results: dict[str, dict]
    seconds: dict[str, float] = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    quantized: Path | None = None


def _prune_stage(rnd: Iteration, device: str, teacher: Path, data: Path, out: Path) -> None:
    if rnd.prune.search is None:
        print_prune_summary(prune(teacher, out, rnd.prune.prune_settings(), calib=data,
                                  device=device))
        return
    from ..search import search_student
    from ..search.report import markdown

    print(markdown(search_student(teacher, out, rnd.prune.search, calib=data,
                                  device=device).report))


def _eval_stage(recipe: Recipe, models: dict[str, Path], heldout: Path, out: Path) -> None:
    e = recipe.eval
    note = quantized_eval_note(recipe)
    if note:
        print(f"[eval] {note}")
    results = {name: evaluate(path, e.tasks_for(name), e.limit, heldout, e.seq_len, e.ppl_seqs,
                              recipe.device, batch_size=e.batch_size)
               for name, path in models.items()}
    with atomic_dir(out) as tmp:
        write_results(results, tmp / RESULTS, meta={"recipe": recipe.name,
                                                    "heldout": str(heldout), "limit": e.limit})


def _export_stage(spec: ExportStage, model: Path, data: Path, device: str, out: Path,
                  text: dict) -> None:
    from ..export.api import CalibrationSettings, export

    export(model, out, spec.format, spec.dtype, spec.tp,
           calib=CalibrationSettings(source=data, **text), device=device)


def quantize_settings(recipe: Recipe) -> QuantizeSettings:
    """The recipe's quantize section, on the recipe's device unless it names its own."""
    q = recipe.quantize.quantize_settings()
    return q if q.device != "auto" else replace(q, device=recipe.device)


def quantized_eval_note(recipe: Recipe) -> str | None:
    """Why the quantized student is left out of evaluation (a checkpoint ``evaluate`` cannot
    load, see ``arch/quantized.py``), or None when it is evaluated or there is none."""
    if recipe.quantize is None:
        return None
    fmt = recipe.quantize.resolved_format()
    why = load_problem(recipe.quantize.scheme, fmt)
    return None if why is None else \
        f"the {QUANTIZED} student ({recipe.quantize.scheme}, {fmt}) is not evaluated: {why}"


def _quantize_stage(recipe: Recipe, model: Path, data: Path, work: Path) -> Stage:
    """``minitron quantize`` of the final student into ``<work>/quantized`` (calibrating on
    the recipe's data where the scheme does)."""
    settings = quantize_settings(recipe)
    calibrated = get_scheme(settings.scheme).needs_calibration(settings.resolved_format())
    inputs = {"model": model, **({"data": data} if calibrated else {})}
    return Stage("quantize", work / QUANTIZED, inputs, {"quantize": settings.record()},
                 lambda out: quantize(model, out, settings, data if calibrated else None))


def _bench_stage(spec: BenchStage, models: list[Path], device: str, out: Path) -> None:
    from ..bench.api import BenchSettings, benchmark
    from ..bench.models import ModelSpec
    from ..bench.report import write_report

    settings = BenchSettings(models=[ModelSpec(str(m)) for m in models], backends=[spec.backend],
                             isl=spec.isl, osl=spec.osl, batch_sizes=tuple(spec.batch_sizes),
                             reps=spec.reps, device="auto" if device == "cpu" else device)
    report = benchmark(settings)
    with atomic_dir(out) as tmp:
        write_report(report, tmp)


def build_stages(recipe: Recipe, work: Path, teacher: Path, data: Path,
                 heldout: Path) -> list[Stage]:
    """Every stage of the recipe in order, with its inputs and settings."""
    stages: list[Stage] = []
    rounds = recipe.rounds()
    current = teacher
    for i, rnd in enumerate(rounds):
        tag = "" if len(rounds) == 1 else f"round{i + 1}-"
        pruned, distilled = work / f"{tag}pruned", work / f"{tag}distilled"
        cfg = replace(rnd.distill, device=recipe.device)
        if i == len(rounds) - 1 and recipe.quantize is not None and recipe.quantize.qad:
            cfg = replace(cfg, quantize=recipe.quantize.scheme)  # writes the quantized student
        inputs = {"teacher": current, "data": data}
        if rnd.prune.scores:
            inputs["scores"] = Path(rnd.prune.scores)
        stages.append(Stage(f"{tag}prune", pruned, inputs,
                            {"prune": rnd.prune.record(), "device": recipe.device},
                            lambda out, r=rnd, t=current: _prune_stage(r, recipe.device, t,
                                                                       data, out)))
        # resume=True: the stage has already discarded scratch of other settings, and a
        # checkpoint-less work dir starts afresh; checking it here would race with rank 0
        stages.append(Stage(f"{tag}distill", distilled,
                            {"teacher": current, "student": pruned, "data": data}, asdict(cfg),
                            lambda out, t=current, s=pruned, c=cfg: distill(
                                t, s, data, out, c, resume=True),
                            scratch=(work_dir_for(distilled.resolve()),), collective=True))
        current, last_pruned = distilled, pruned
    text = {"text_column": rounds[-1].prune.text_column, "split": rounds[-1].prune.split}
    for spec in recipe.export:  # FP8 calibrates on the data as the last prune reads it
        name = f"export-{spec.format}-{spec.dtype}-tp{spec.tp}"
        stages.append(Stage(name, work / "export" / name, {"model": current, "data": data},
                            {**asdict(spec), "device": recipe.device, **text},
                            lambda out, s=spec, m=current: _export_stage(s, m, data,
                                                                         recipe.device, out, text)))
    models = {"teacher": teacher, "pruned": last_pruned, "distilled": current}
    if recipe.quantize is not None and not recipe.quantize.qad:
        stages.append(_quantize_stage(recipe, current, data, work))
        if quantized_eval_note(recipe) is None:
            models[QUANTIZED] = stages[-1].output
    stages.append(Stage("eval", work / "eval", {**models, "heldout": heldout},
                        {"eval": asdict(recipe.eval), "device": recipe.device},
                        lambda out: _eval_stage(recipe, models, heldout, out)))
    if recipe.bench is not None:
        stages.append(Stage("bench", work / "bench", {"teacher": teacher, "student": current},
                            {**asdict(recipe.bench), "device": recipe.device},
                            lambda out: _bench_stage(recipe.bench, [teacher, current],
                                                     recipe.device, out)))
    return stages


def run_pipeline(recipe: Recipe, work_dir: str | Path) -> PipelineResult:
    """Run (or finish) every stage of ``recipe`` under ``work_dir``; write the final report.

    Under ``torchrun`` every rank calls this; all of them return rank 0's result."""
    work = Path(work_dir)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    teacher, data, heldout = on_main_rank(lambda: _resolve_assets(recipe, work))
    seconds["assets"] = time.perf_counter() - t0
    stages = build_stages(recipe, work, teacher, data, heldout)
    for stage in stages:
        t0 = time.perf_counter()
        stage.execute()
        seconds[stage.name] = time.perf_counter() - t0
    return on_main_rank(lambda: _finish(recipe, stages, seconds, work))


def _resolve_assets(recipe: Recipe, work: Path) -> tuple[Path, Path, Path]:
    """Local paths of teacher, training data and held-out text (built-ins materialized, Hub
    teachers found in or downloaded into the Hugging Face cache)."""
    if recipe.teacher in NAMED_SHAPES:
        raise MinitronError(f"teacher {recipe.teacher} is a named shape without weights: it "
                            "plans a --dry-run only; name a checkpoint folder or Hub id to run")
    work.mkdir(parents=True, exist_ok=True)
    return (assets.resolve_checkpoint(recipe.teacher, work), assets.resolve(recipe.data, work),
            assets.resolve(recipe.heldout, work))


def _finish(recipe: Recipe, stages: list[Stage], seconds: dict[str, float],
            work: Path) -> PipelineResult:
    """The result of finished stages, with the final report written."""
    by_name = {s.name: s for s in stages}
    evaluation = by_name["eval"]
    results = json.loads((evaluation.output / RESULTS).read_text())["results"]
    result = PipelineResult(evaluation.inputs["teacher"], evaluation.inputs["pruned"],
                            evaluation.inputs["distilled"], evaluation.output, results, seconds)
    if "quantize" in by_name:
        result.quantized = by_name["quantize"].output
    elif recipe.quantize is not None:  # qad: the distilled student is the quantized one
        result.quantized = result.distilled
    bench = by_name.get("bench")
    result.report = write_final_report(recipe, result, bench.output if bench else None, work)
    return result


def write_final_report(recipe: Recipe, result: PipelineResult, bench_dir: Path | None,
                       work: Path) -> dict:
    """``report.json`` / ``report.md`` / ``report.png``: teacher vs student."""
    params = {name: count_params(load_config(path))
              for name, path in (("teacher", result.teacher), ("student", result.distilled))}
    report = {"recipe": recipe.name, "parameters": params,
              "parameter_ratio": params["student"] / params["teacher"],
              "accuracy": result.results, "stage_seconds": result.seconds}
    chance = _chance_accuracy(recipe, result.results)
    kept = _retention(result.results, chance)
    report["chance_accuracy"] = chance
    report["retention"] = {name: asdict(value) for name, value in kept.items()}
    report["models"] = _models(result)
    if result.quantized is not None:
        report[QUANTIZED] = _quantized_summary(recipe, result.quantized)
    if bench_dir is not None:
        bench = json.loads((bench_dir / "bench.json").read_text())
        report["throughput"] = bench.get("max_throughput")
    write_json_atomic(work / "report.json", report)
    lines = [f"# {recipe.name}: teacher vs student", "", comparison_table(report).rstrip()]
    if QUANTIZED in report:
        lines += ["", _quantized_line(report[QUANTIZED])]
    if "throughput" in report:
        lines += ["", "throughput (max over batch sizes):", "```",
                  json.dumps(report["throughput"], indent=2), "```"]
    write_text_atomic(work / "report.md", "\n".join(lines) + "\n")
    plot_comparison(result.results, chance, work / "report.png", recipe.name)
    return report


def _models(result: PipelineResult) -> dict[str, dict]:
    """Weight bytes on disk and parameters of each model (the quantized student has the
    distilled one's parameters)."""
    paths = {"teacher": result.teacher, "pruned": result.pruned, "distilled": result.distilled}
    models = {name: {"weight_bytes": weight_bytes(path), "params": count_params(load_config(path))}
              for name, path in paths.items()}
    if result.quantized not in (None, result.distilled):
        models[QUANTIZED] = {"weight_bytes": weight_bytes(result.quantized),
                             "params": models["distilled"]["params"]}
    return models


def _quantized_summary(recipe: Recipe, folder: Path) -> dict:
    """Scheme, format and weight bytes of the quantized student (its ``quantize.json``), and
    why it is not evaluated where it is not."""
    record = json.loads(artifact_path(folder, QUANTIZE_RECORD).read_text())
    return {"path": str(folder), "scheme": record["scheme"], "format": record["format"],
            "weight_bytes": record["weight_bytes"], "not_evaluated": quantized_eval_note(recipe)}


def _quantized_line(summary: dict) -> str:
    sizes = summary["weight_bytes"]
    line = (f"{QUANTIZED}: {summary['scheme']} ({summary['format']}), weights "
            f"{sizes['before']:,} -> {sizes['after']:,} bytes "
            f"({sizes['after'] / sizes['before']:.1%})")
    return line + (f"; {summary['not_evaluated']}" if summary["not_evaluated"] else "")


def _chance_accuracy(recipe: Recipe, results: dict[str, dict]) -> dict[str, float]:
    """Each task's accuracy by uniform guessing, on the items the recipe scores."""
    return {task: chance_accuracy(task, recipe.eval.limit)
            for task in metric_names(results) if task != PPL}


def _retention(results: dict[str, dict], chance: dict[str, float]) -> dict[str, Retention]:
    """What the pruned and the distilled model keep of the teacher."""
    return {name: retention(results["teacher"], results[name], chance)
            for name in results if name != "teacher"}


def summary(result: PipelineResult) -> str:
    """The side-by-side table and stage times as printed at the end of a run."""
    times = ", ".join(f"{k} {v:.0f}s" for k, v in result.seconds.items())
    return (f"{comparison_table(result.report)}\nstage times: {times}\n"
            f"wrote {result.eval_dir / RESULTS} and report.md\n")
