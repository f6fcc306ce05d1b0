"""Prune -> distill -> evaluate, driven by a recipe, as resumable stages (``stages.py``):
each writes its own output under the work dir plus a manifest; a re-run skips stages whose
settings and inputs are unchanged, and an interrupted distillation resumes from its last
checkpoint."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from . import assets
from .distill.api import distill, work_dir_for
from .eval.api import evaluate, markdown_table, write_results
from .prune import prune
from .recipe import Recipe
from .report import print_prune_summary
from .stages import Stage
from .target import TargetSpec, parse_layer_ranges

RESULTS = "results.json"


@dataclass
class PipelineResult:
    teacher: Path
    pruned: Path
    distilled: Path
    eval_dir: Path
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


def _eval_stage(recipe: Recipe, models: dict[str, Path], heldout: Path, out: Path) -> None:
    import shutil
    import tempfile

    e = recipe.eval
    results = {name: evaluate(path, e.tasks, e.limit, heldout, e.seq_len, e.ppl_seqs,
                              recipe.device, batch_size=e.batch_size)
               for name, path in models.items()}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write_results(results, tmp / RESULTS, meta={"recipe": recipe.name,
                                                    "heldout": str(heldout), "limit": e.limit})
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def build_stages(recipe: Recipe, work: Path, teacher: Path, data: Path,
                 heldout: Path) -> list[Stage]:
    """The recipe's stages in order, with their inputs and settings."""
    pruned, distilled, eval_dir = work / "pruned", work / "distilled", work / "eval"
    distill_config = replace(recipe.distill, device=recipe.device)
    return [
        Stage("prune", pruned, {"teacher": teacher, "data": data},
              {"prune": asdict(recipe.prune), "device": recipe.device},
              lambda out: _prune_stage(recipe, teacher, data, out)),
        Stage("distill", distilled, {"teacher": teacher, "student": pruned, "data": data},
              asdict(distill_config),
              lambda out: distill(teacher, pruned, data, out, distill_config,
                                  resume=work_dir_for(out.resolve()).exists()),
              scratch=(work_dir_for(distilled.resolve()),)),
        Stage("eval", eval_dir, {"teacher": teacher, "pruned": pruned, "distilled": distilled,
                                 "heldout": heldout},
              {"eval": asdict(recipe.eval), "device": recipe.device},
              lambda out: _eval_stage(recipe, {"teacher": teacher, "pruned": pruned,
                                               "distilled": distilled}, heldout, out)),
    ]


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
    stages = build_stages(recipe, work, teacher, data, heldout)
    for stage in stages:
        t0 = time.perf_counter()
        stage.execute()
        seconds[stage.name] = time.perf_counter() - t0
    eval_dir = stages[-1].output
    results = json.loads((eval_dir / RESULTS).read_text())["results"]
    return PipelineResult(teacher, stages[0].output, stages[1].output, eval_dir, results,
                          seconds)


def summary(result: PipelineResult) -> str:
    """The side-by-side table and stage times as printed at the end of a run."""
    times = ", ".join(f"{k} {v:.0f}s" for k, v in result.seconds.items())
    return (f"{markdown_table(result.results)}\nstage times: {times}\n"
            f"wrote {result.eval_dir / RESULTS} and results.md\n")
