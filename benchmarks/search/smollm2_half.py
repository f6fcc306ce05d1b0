"""SmolLM2-135M at half its parameters: the searched student against the ``--target-params``
rule's student after the same distillation budget, and how the ranking after a short
distillation agrees with the ranking after a longer one.

Every step keeps its output under ``--work`` and is skipped when it is there, so an
interrupted run continues. Usage (repository root):

    python benchmarks/search/smollm2_half.py --work /tmp/search-bench \\
        --out benchmarks/search/results
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from provenance import provenance  # noqa: E402

from minitron_deploy.data import assets  # noqa: E402
from minitron_deploy.distill.api import DistillConfig, distill  # noqa: E402
from minitron_deploy.eval.api import evaluate  # noqa: E402
from minitron_deploy.pruning.api import prune  # noqa: E402
from minitron_deploy.pruning.settings import PruneSettings  # noqa: E402
from minitron_deploy.search import SearchSettings, search_student  # noqa: E402


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("benchmarks/search/results"))
    p.add_argument("--candidates", type=int, default=3, help="K distilled during the search")
    p.add_argument("--rank-tokens", type=int, default=8192)
    p.add_argument("--final-tokens", type=int, default=None,
                   help="distillation budget of the compared students (default: the largest "
                        "--spearman-tokens budget, else 16384)")
    p.add_argument("--spearman-tokens", default="",
                   help="budgets (e.g. 2048,8192,32768) at which every candidate is distilled; "
                        "the rankings after pruning and after each budget are compared with "
                        "the one after the largest (Spearman), and the runner-up compared with "
                        "the searched student is the best other candidate after it")
    p.add_argument("--tasks", default="ppl", help="eval tasks of the final students")
    p.add_argument("--task-limit", type=int, default=100)
    return p.parse_args()


def _settings(rank_tokens: int, top_k: int, scores: Path | None) -> SearchSettings:
    """Half the parameters; the demo recipe's sequence length, batch and learning rate."""
    return SearchSettings(target_params=0.5, candidates=top_k, rank_tokens=rank_tokens, lr=1e-3,
                          depth_metric="bi", calib_samples=32, seq_len=256, batch_size=8,
                          heldout_seqs=16, scores=None if scores is None else str(scores))


def _kd(tokens: int) -> DistillConfig:
    """The search's own short distillation (2,048 tokens a step), for ``tokens``: a compared
    student at a budget the search also ran is the very model it ranked."""
    return _settings(tokens, 1, None).kd_config("cpu", "fp32")


def _distilled(teacher: Path, student: Path, data: Path, out: Path, tokens: int) -> Path:
    if not (out / "config.json").is_file():
        distill(teacher, student, data, out, _kd(tokens), resume=True)
    return out


def _evaluated(model: Path, heldout: Path, tasks: list[str], limit: int) -> dict:
    """The eval results, cached beside the model per task list and item limit."""
    path = model.parent / f".{model.name}-eval-{'-'.join(tasks)}-{limit}.json"
    if not path.is_file():
        results = evaluate(model, tasks, limit, heldout, seq_len=256, ppl_seqs=32, dtype="fp32")
        path.write_text(json.dumps(results, indent=2) + "\n")
    return json.loads(path.read_text())


def _pruned(teacher: Path, out: Path, shape: dict, scores: Path) -> Path:
    if not (out / "config.json").is_file():
        settings = PruneSettings(
            hidden_size=shape["hidden_size"], ffn_hidden_size=shape["ffn_hidden_size"],
            num_heads=shape["num_heads"], num_kv_heads=shape["num_kv_heads"],
            num_layers=shape["num_layers"], depth_metric="bi", scores=str(scores))
        prune(teacher, out, settings, dtype="fp32")
    return out


def _same_weights(a: Path, b: Path) -> bool:
    """Whether two checkpoints hold bit-identical tensors."""
    import torch
    from safetensors.torch import load_file

    x, y = (load_file(str(d / "model.safetensors")) for d in (a, b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _search(teacher, calib, heldout, out: Path, rank_tokens: int, top_k: int,
            scores: Path | None = None) -> dict:
    if not (out / "config.json").is_file():
        search_student(teacher, out, _settings(rank_tokens, top_k, scores), calib=calib,
                       heldout=heldout, dtype="fp32")
    return json.loads((out / "minitron" / "search.json").read_text())


def _budgets(args) -> list[int]:
    return sorted(int(n) for n in args.spearman_tokens.split(",") if n)


def _spearman(args, teacher, calib, heldout, report: dict, work: Path) -> dict:
    """Every candidate ranked after each ``--spearman-tokens`` budget (a search with K = all,
    the same scores; the main search's results are reused where they match), and the Spearman
    correlation of each ranking with the one after the largest budget."""
    budgets = _budgets(args)
    losses = {"after pruning": {r["key"]: r["loss_pruned"] for r in report["candidates"]}}
    for n in budgets:
        cache = work / f".searched-all-{n}.partial" / "search"
        cache.mkdir(parents=True, exist_ok=True)
        for done in (work / "searched" / "minitron" / "search").glob("*.json"):
            if not (cache / done.name).exists():
                shutil.copy2(done, cache / done.name)
        short = _search(teacher, calib, heldout, work / f"searched-all-{n}", n,
                        len(report["candidates"]), work / "searched")
        losses[f"after {n} tokens"] = {r["key"]: r["loss_kd"] for r in short["candidates"]}
    keys = sorted(losses["after pruning"])
    reference = losses[f"after {budgets[-1]} tokens"]
    return {"reference": f"after {budgets[-1]} tokens", "losses": losses,
            "spearman": {name: spearmanr([got[k] for k in keys],
                                         [reference[k] for k in keys]).statistic
                         for name, got in losses.items() if got is not reference}}


def main() -> None:
    args = _args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    teacher = assets.resolve_checkpoint("builtin:smollm2-135m", work)
    calib = assets.resolve("builtin:stdlib-docs", work)
    heldout = assets.resolve("builtin:stdlib-docs-heldout", work)
    tasks = [t for t in args.tasks.split(",") if t]
    times: dict[str, float] = {}

    t0 = time.perf_counter()
    report = _search(teacher, calib, heldout, work / "searched", args.rank_tokens,
                     args.candidates)
    times["search"] = time.perf_counter() - t0
    spearman = _spearman(args, teacher, calib, heldout, report, work) \
        if args.spearman_tokens else {}
    final_tokens = args.final_tokens or (max(_budgets(args)) if spearman else 16384)
    scores = work / "searched"
    rule_shape = report["rule"]["shape"]
    scores_file = scores / "minitron" / "importance.safetensors"
    rule = _pruned(teacher, work / "rule", rule_shape, scores_file)
    identical = _same_weights(work / "searched", rule)
    compared = [("rule", rule)]
    if identical:  # then the best other candidate instead
        losses = (spearman["losses"][spearman["reference"]] if spearman else
                  {r["key"]: r["loss_kd"] for r in report["candidates"]
                   if r["loss_kd"] is not None})
        runner = min((k for k in losses if k != report["chosen"]), key=losses.get)
        shape = next(r["shape"] for r in report["candidates"] if r["key"] == runner)
        compared = [("runner_up", _pruned(teacher, work / "runner-up", shape, scores_file))]

    final = {"searched_equals_rule": identical}
    for name, student in (("searched", work / "searched"), *compared):
        t0 = time.perf_counter()
        model = _distilled(teacher, student, calib, work / f"{name}-kd{final_tokens}",
                           final_tokens)
        final[name] = {"shape": json.loads((student / "minitron" / "minitron.json").read_text())
                       ["target_shape"],
                       "pruned": _evaluated(student, heldout, ["ppl"], args.task_limit),
                       "distilled": _evaluated(model, heldout, tasks, args.task_limit)}
        times[f"{name} final"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    final["teacher"] = _evaluated(teacher, heldout, tasks, args.task_limit)
    times["teacher eval"] = time.perf_counter() - t0

    result = {"search": report, "final_tokens": final_tokens, "tasks": tasks,
              "task_limit": args.task_limit, "final": final,
              "spearman": spearman, "seconds": times, **provenance()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "smollm2_half.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "search"}, indent=2))


if __name__ == "__main__":
    main()
