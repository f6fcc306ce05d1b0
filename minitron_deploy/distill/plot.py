"""Loss-curve plot of a training log."""

from __future__ import annotations

from pathlib import Path


def plot_loss_curve(records: list[dict], path: Path, title: str) -> Path:
    """PNG of loss (and its KD / LM / hidden parts where present) against tokens seen."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    tokens = [r["tokens"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(tokens, [r["loss"] for r in records], label="total", linewidth=2)
    for part in ("kd", "lm", "hidden"):
        values = [r[part] for r in records]
        if any(values) and values != [r["loss"] for r in records]:
            ax.plot(tokens, values, label=part, alpha=0.7)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("loss per token")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
