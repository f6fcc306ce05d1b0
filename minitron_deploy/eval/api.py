"""``evaluate()``: perplexity and zero-shot multiple choice for one or more checkpoints, with
JSON and Markdown output."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from ..arch.modeling import load_model
from ..core.errors import MinitronError
from ..core.files import write_text_atomic
from ..core.precision import resolve_device, resolve_precision
from ..data.text import check_seq_len, check_texts, load_texts, pack_tokens
from .multiple_choice import evaluate_items
from .perplexity import perplexity_with_stderr
from .tasks import TASKS, load_named_task

PPL = "ppl"
#: Key of the perplexity's standard error in a model's results (not a task of its own).
PPL_STDERR = "ppl_stderr"
#: Tasks whose headline metric is acc_norm in lm-eval (the others report acc).
NORMED = {"hellaswag", "piqa", "arc_easy", "arc_challenge"}


def parse_tasks(spec: str) -> list[str]:
    """``"ppl,hellaswag,..."`` -> validated task list."""
    tasks = [t.strip() for t in spec.split(",") if t.strip()]
    unknown = [t for t in tasks if t != PPL and t not in TASKS]
    if unknown or not tasks:
        raise MinitronError(f"unknown task(s) {', '.join(unknown) or '(none)'}; choose from "
                            f"{', '.join([PPL, *TASKS])}")
    return tasks


def evaluate(model_dir: str | Path, tasks: list[str], limit: int | None = None,
             ppl_data: str | Path | None = None, seq_len: int = 512, ppl_seqs: int = 64,
             device: str = "auto", dtype: str = "auto", batch_size: int = 16,
             text_column: str = "text", split: str = "train") -> dict:
    """Metrics of one checkpoint: ``{"ppl": float, "ppl_stderr": float, task: {n, acc,
    acc_stderr, ...}}``.
    ``device`` "auto" is CUDA when a GPU is visible, else the CPU; ``dtype`` "auto" is bf16
    where it is faster on the device (``precision.py``), else fp32. A ``ppl_data`` table is read
    from its column ``text_column`` (a DatasetDict folder from its split ``split``)."""
    if PPL in tasks and ppl_data is None:
        raise MinitronError("perplexity needs held-out text (--ppl-data)")
    device = resolve_device(device)
    if PPL in tasks:
        check_texts(ppl_data, text_column, split)
    model, tokenizer = load_model(model_dir, dtype=resolve_precision(device, dtype),
                                  device=device)
    if tokenizer is None:
        raise MinitronError(f"{model_dir} has no tokenizer")
    results: dict = {}
    for task in tqdm(tasks, desc=f"eval {Path(model_dir).name}", unit="task"):
        if task == PPL:
            check_seq_len(seq_len, model.config)
            seqs = pack_tokens(load_texts(ppl_data, text_column, split), tokenizer, seq_len,
                               ppl_seqs, seed=0)
            results[PPL], results[PPL_STDERR] = perplexity_with_stderr(model, seqs)
            if not math.isfinite(results[PPL]):
                raise MinitronError(f"non-finite perplexity ({results[PPL]}) for {model_dir}: "
                                    "check the weights for NaN/Inf")
        else:
            results[task] = asdict(evaluate_items(model, tokenizer, load_named_task(task, limit),
                                                  batch_size))
    return results


def headline(task: str, metrics) -> float:
    """The number a table shows: perplexity, else acc_norm or acc as lm-eval reports."""
    if task == PPL:
        return metrics
    return metrics["acc_norm" if task in NORMED else "acc"]


def metric_names(results: dict[str, dict]) -> list[str]:
    """Perplexity and the tasks found in any model's results, in order (standard errors are
    kept beside their metric, not listed)."""
    return list(dict.fromkeys(t for r in results.values() for t in r if t != PPL_STDERR))


def markdown_table(results: dict[str, dict]) -> str:
    """Tasks as rows, models as columns (accuracies in %)."""
    names = list(results)
    tasks = metric_names(results)
    lines = ["| task | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for task in tasks:
        label = task if task == PPL else f"{task} ({'acc_norm' if task in NORMED else 'acc'}, %)"
        cells = []
        for name in names:
            value = results[name].get(task)
            cells.append("" if value is None else (f"{value:.2f}" if task == PPL
                                                    else f"{100 * headline(task, value):.1f}"))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, dict], out_file: str | Path, meta: dict | None = None) -> Path:
    """``out_file`` (JSON) and the same path with ``.md`` (table), each written atomically."""
    out = Path(out_file)
    write_text_atomic(out, json.dumps({"meta": meta or {}, "results": results}, indent=2) + "\n")
    write_text_atomic(out.with_suffix(".md"), markdown_table(results))
    return out
