"""The recipe report's figure: linear perplexity from zero, chance lines, standard-error bars."""

import math

import pytest
from matplotlib.collections import LineCollection
from matplotlib.container import BarContainer

from minitron_deploy.pipeline.report_plot import comparison_figure, plot_comparison

CHANCE = {"arc_easy": 0.25, "piqa": 0.5}


def _mc(acc: float, n: int = 200) -> dict:
    se = math.sqrt(acc * (1 - acc) / (n - 1))
    return {"n": n, "acc": acc - 0.02, "acc_stderr": se + 0.01, "acc_norm": acc,
            "acc_norm_stderr": se}


RESULTS = {"teacher": {"ppl": 28.1, "ppl_stderr": 2.1, "arc_easy": _mc(0.52), "piqa": _mc(0.64)},
           "pruned": {"ppl": 37.1, "ppl_stderr": 2.9},
           "distilled": {"ppl": 30.9, "ppl_stderr": 2.4, "arc_easy": _mc(0.47),
                         "piqa": _mc(0.61)},
           "quantized": {"ppl": 31.2, "ppl_stderr": 2.5, "arc_easy": _mc(0.46),
                         "piqa": _mc(0.60)}}


@pytest.fixture
def axes():
    fig = comparison_figure(RESULTS, CHANCE, "tiny")
    fig.canvas.draw()  # tick labels are only formatted on draw
    yield fig.axes
    import matplotlib.pyplot as plt

    plt.close(fig)


def _error_halves(ax) -> list[float]:
    """Half the length of every error bar on ``ax``, in drawing order."""
    halves = []
    for bars in ax.containers:
        if isinstance(bars, BarContainer) and bars.errorbar is not None:
            segments = bars.errorbar.lines[2][0].get_segments()
            halves += [(seg[1][1] - seg[0][1]) / 2 for seg in segments]
    return halves


def test_perplexity_axis_is_linear_from_zero_with_plain_labels(axes):
    ppl = axes[0]
    assert ppl.get_yscale() == "linear" and ppl.get_ylim()[0] == 0
    assert ppl.get_ylim()[1] > 37.1 + 2.9
    labels = [t.get_text() for t in ppl.get_yticklabels()]
    assert labels and not any("10^" in t or "$" in t or "times" in t for t in labels)


def test_error_bars_are_the_standard_errors(axes):
    ppl, acc = axes
    assert _error_halves(ppl) == pytest.approx([2.1, 2.9, 2.4, 2.5])
    expected = [100 * RESULTS[m][t]["acc_norm_stderr"]
                for m in ("teacher", "distilled", "quantized") for t in CHANCE]
    assert _error_halves(acc) == pytest.approx(expected)


def test_accuracy_panel_draws_each_tasks_chance_line_and_skips_unscored_models(axes):
    acc = axes[1]
    lines = [c for c in acc.collections if isinstance(c, LineCollection)
             and c.get_label() == "chance"]
    assert len(lines) == 1
    levels = [(seg[0][1], seg[1][1]) for seg in lines[0].get_segments()]
    assert levels == [(25.0, 25.0), (50.0, 50.0)]
    assert acc.get_ylim()[0] == 0
    assert [t.get_text() for t in acc.get_legend().get_texts()] == \
        ["teacher", "distilled", "quantized", "chance"]


def test_every_model_has_its_bar_and_label_in_the_perplexity_panel(axes):
    ppl = axes[0]
    assert [t.get_text() for t in ppl.get_xticklabels()] == list(RESULTS)
    labels = [t.get_text() for t in ppl.texts]
    assert labels == [f"{r['ppl']:.1f} ± {r['ppl_stderr']:.1f}" for r in RESULTS.values()]


def test_plot_comparison_writes_a_png(tmp_path):
    path = plot_comparison(RESULTS, CHANCE, tmp_path / "report.png", "tiny")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
