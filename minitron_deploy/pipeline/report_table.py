"""The report's table: one row per model (teacher, pruned, distilled, quantized) with its
weights on disk, parameters, held-out perplexity ± standard error, zero-shot accuracies and
what it keeps of the teacher."""

from __future__ import annotations

from ..eval.api import NORMED, PPL, PPL_STDERR, headline, metric_names

_UNITS = ((1e9, "G"), (1e6, "M"), (1e3, "k"))


def _scaled(value: float, unit: str) -> str:
    """``value`` with an SI prefix: 538.1 MB, 134.5 M."""
    for scale, prefix in _UNITS:
        if value >= scale:
            return f"{value / scale:.1f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


def _size_cells(model: dict, teacher: dict | None) -> list[str]:
    """Weights on disk and parameters, each as a share of the teacher's (but the teacher's)."""
    cells = []
    for key, unit in (("weight_bytes", "B"), ("params", "")):
        share = "" if teacher is None else f" ({model[key] / teacher[key]:.1%})"
        cells.append(_scaled(model[key], unit) + share)
    return cells


def _result_cells(res: dict, tasks: list[str]) -> list[str]:
    """Perplexity ± standard error and each task's accuracy (blank where not scored)."""
    ppl = f"{res[PPL]:.2f} ± {res.get(PPL_STDERR, float('nan')):.2f}" if PPL in res else ""
    return [ppl, *[f"{100 * headline(t, res[t]):.1f}" if t in res else "" for t in tasks]]


def _kept_cells(ret: dict) -> list[str]:
    """Perplexity ratio and share of above-chance accuracy kept, ± standard errors."""
    ratio, kept = ret.get("ppl_ratio"), ret.get("accuracy_kept")
    return ["" if ratio is None else f"{ratio:.2f}x ± {ret['ppl_ratio_stderr']:.2f}",
            "" if kept is None else f"{kept:.0%} ± {ret['accuracy_kept_stderr']:.0%}"]


def comparison_table(report: dict) -> str:
    """Markdown: a row per model of ``report["models"]`` (``weight_bytes``, ``params``) with
    its results (``report["accuracy"]``) and retention (``report["retention"]``), and a note
    saying what the last two columns are."""
    models, results = report["models"], report["accuracy"]
    kept = report.get("retention", {})
    tasks = [t for t in metric_names(results) if t != PPL]
    head = ["model", "weights on disk", "params", "perplexity",
            *[f"{t} ({'acc_norm' if t in NORMED else 'acc'}, %)" for t in tasks],
            "ppl vs teacher", "accuracy kept"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, model in models.items():
        teacher = None if name == "teacher" else models["teacher"]
        cells = [name, *_size_cells(model, teacher), *_result_cells(results.get(name, {}), tasks),
                 *_kept_cells(kept.get(name, {}))]
        lines.append("| " + " | ".join(cells) + " |")
    note = ("ppl vs teacher: held-out perplexity as a multiple of the teacher's; accuracy kept: "
            "the share of the teacher's above-chance accuracy kept over the tasks both were "
            "scored on; ± one standard error.")
    return "\n".join(lines) + "\n\n" + note + "\n"
