"""``report.png`` of a recipe run: held-out perplexity and zero-shot accuracy of every model
side by side, on linear axes from zero, with one-standard-error bars and each task's chance
accuracy drawn in."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from ..eval.api import NORMED, PPL, PPL_STDERR, headline, metric_names

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_ERR = {"capsize": 4, "ecolor": "0.25", "elinewidth": 1}


def _accuracy_stderr(task: str, metrics: dict) -> float:
    return metrics.get("acc_norm_stderr" if task in NORMED else "acc_stderr", float("nan"))


def _top(value: float, err: float) -> float:
    return value + (0.0 if math.isnan(err) else err)  # a NaN error draws no bar


def _label_bars(ax, xs: list[float], values: list[float], labels: list[str],
                errors: list[float], size: float) -> None:
    """Each bar's label printed just above its error bar."""
    for x, value, label, err in zip(xs, values, labels, errors):
        ax.annotate(label, (x, _top(value, err)), xytext=(0, 3), textcoords="offset points",
                    ha="center", va="bottom", fontsize=size)


def _perplexity_panel(ax, results: dict[str, dict], colors: dict[str, str]) -> None:
    names = [name for name, res in results.items() if PPL in res]
    values = [results[name][PPL] for name in names]
    errors = [results[name].get(PPL_STDERR, float("nan")) for name in names]
    xs = list(range(len(names)))
    ax.bar(xs, values, yerr=errors, color=[colors[n] for n in names], error_kw=_ERR)
    labels = [f"{v:.1f}" + ("" if math.isnan(e) else f" ± {e:.1f}")
              for v, e in zip(values, errors)]
    _label_bars(ax, xs, values, labels, errors, 9)
    ax.set_xticks(xs, names)
    ax.set_ylim(0, 1.15 * max(map(_top, values, errors)))
    ax.ticklabel_format(axis="y", style="plain", useOffset=False)
    ax.set_ylabel("perplexity")
    ax.set_title("held-out perplexity (lower is better)", fontsize=10)


def _accuracy_panel(ax, results: dict[str, dict], tasks: list[str], chance: dict[str, float],
                    colors: dict[str, str]) -> None:
    names = [name for name, res in results.items() if any(t in res for t in tasks)]
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        scored = [(i, t) for i, t in enumerate(tasks) if t in results[name]]
        xs = [i - 0.4 + (k + 0.5) * width for i, _ in scored]
        values = [100 * headline(t, results[name][t]) for _, t in scored]
        errors = [100 * _accuracy_stderr(t, results[name][t]) for _, t in scored]
        ax.bar(xs, values, width, yerr=errors, color=colors[name], label=name, error_kw=_ERR)
        _label_bars(ax, xs, values, [f"{v:.0f}" for v in values], errors, 7)
    ax.hlines([100 * chance[t] for t in tasks], [i - 0.45 for i in range(len(tasks))],
              [i + 0.45 for i in range(len(tasks))], colors="0.3", linestyles="--",
              linewidth=1.2, label="chance", zorder=3)
    items = {t: next(results[n][t]["n"] for n in names if t in results[n]) for t in tasks}
    ax.set_xticks(range(len(tasks)), [f"{t}\n{'acc_norm' if t in NORMED else 'acc'}, "
                                      f"{items[t]} items" for t in tasks])
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title("zero-shot accuracy (higher is better)", fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles[1:] + handles[:1], labels[1:] + labels[:1], fontsize=8, loc="upper right",
              ncols=len(names) + 1)  # models first, then the chance line


def comparison_figure(results: dict[str, dict], chance: dict[str, float], title: str) -> Figure:
    """The report's figure: a perplexity panel where every model has perplexity, an accuracy
    panel where any has a task; ``chance`` gives each task's chance accuracy (0-1)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    tasks = [t for t in metric_names(results) if t != PPL]
    has_ppl = any(PPL in r for r in results.values())
    panels = int(has_ppl) + int(bool(tasks))
    fig, axes = plt.subplots(1, panels, figsize=(3.5 + 4 * panels, 4.5), squeeze=False,
                             width_ratios=[1, 1.6] if panels == 2 else None)
    axes = list(axes[0])
    colors = {name: f"C{k}" for k, name in enumerate(results)}
    if has_ppl:
        _perplexity_panel(axes.pop(0), results, colors)
    if tasks:
        _accuracy_panel(axes.pop(0), results, tasks, chance, colors)
    fig.suptitle(f"{title}: teacher vs students")
    fig.text(0.5, 0.01, "error bars: ±1 standard error", ha="center", fontsize=8, color="0.3")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return fig


def plot_comparison(results: dict[str, dict], chance: dict[str, float], path: Path,
                    title: str) -> Path:
    """Write :func:`comparison_figure` to ``path`` (PNG)."""
    from matplotlib import pyplot as plt

    fig = comparison_figure(results, chance, title)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
