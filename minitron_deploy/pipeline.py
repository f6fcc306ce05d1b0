"""Prune -> distill -> evaluate, driven by a recipe. Each stage writes its own directory under
the work dir and is skipped when that output is already complete (outputs are written
atomically, so a complete directory is a finished stage); an interrupted distillation resumes
from its last checkpoint."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from . import assets
from .distill.api import distill, work_dir_for
from .eval.api import evaluate, markdown_table, write_results
from .prune import prune
from .recipe import Recipe
from .report import print_prune_summary
from .target import TargetSpec, parse_layer_ranges


@dataclass
class PipelineResult:
    teacher: Path
    pruned: Path
    distilled: Path
    eval_file: Path
    results: dict[str, dict]
    seconds: dict[str, float] = field(default_factory=dict)


def _prune_stage(recipe: Recipe, teacher: Path, data: Path, out: Path) -> None:
    p = recipe.prune
    spec = TargetSpec(hidden_size=p.hidden_size, ffn_hidden_size=p.ffn_hidden_size,
                      num_heads=p.num_heads, num_kv_heads=p.num_kv_heads,
                      num_layers=p.num_layers, target_params=p.target_params,
                      drop_layers=parse_layer_ranges(p.drop_layers) if p.drop_layers else None)
    report = prune(teacher, out, spec, calib=data, calib_samples=p.calib_samples,
                   seq_len=p.seq_len, batch_size=p.batch_size, device=recipe.device,
                   rescale_norms={"auto": None, "on": True, "off": False}[p.rescale_norms])
    print_prune_summary(report)


def run_pipeline(recipe: Recipe, work_dir: str | Path) -> PipelineResult:
    """Run (or finish) every stage of ``recipe`` under ``work_dir``."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    teacher = assets.resolve(recipe.teacher, work)
    data = assets.resolve(recipe.data, work)
    heldout = assets.resolve(recipe.heldout, work)
    seconds["assets"] = time.perf_counter() - t0

    pruned, distilled = work / "pruned", work / "distilled"
    t0 = time.perf_counter()
    if not (pruned / "config.json").is_file():
        _prune_stage(recipe, teacher, data, pruned)
    seconds["prune"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if not (distilled / "config.json").is_file():
        config = recipe.distill
        config.device = recipe.device
        distill(teacher, pruned, data, distilled, config,
                resume=work_dir_for(distilled.resolve()).exists())
    seconds["distill"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    e = recipe.eval
    results = {name: evaluate(path, e.tasks, e.limit, heldout, e.seq_len, e.ppl_seqs,
                              recipe.device, batch_size=e.batch_size)
               for name, path in (("teacher", teacher), ("pruned", pruned),
                                  ("distilled", distilled))}
    eval_file = write_results(results, work / "eval.json",
                              meta={"recipe": recipe.name, "heldout": str(heldout),
                                    "limit": e.limit})
    seconds["eval"] = time.perf_counter() - t0
    return PipelineResult(teacher, pruned, distilled, eval_file, results, seconds)


def summary(result: PipelineResult) -> str:
    """The side-by-side table and stage times as printed at the end of a run."""
    times = ", ".join(f"{k} {v:.0f}s" for k, v in result.seconds.items())
    return f"{markdown_table(result.results)}\nstage times: {times}\nwrote {result.eval_file}\n"
