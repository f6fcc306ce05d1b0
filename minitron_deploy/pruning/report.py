"""Human-readable summaries printed at the end of a command."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..importance.experts import describe_loads
from .api import PruneReport


def print_prune_summary(report: PruneReport, console: Console | None = None) -> None:
    """Params before/after, shape per axis, dropped layers and stage times."""
    console = console or Console()
    src, dst = report.source_shape.as_dict(), report.target.shape.as_dict()
    table = Table(title="minitron prune")
    table.add_column("")
    table.add_column("source", justify="right")
    table.add_column("pruned", justify="right")
    before, after = report.target.params_before, report.target.params_after
    table.add_row("parameters", f"{before:,}", f"{after:,} ({after / before:.1%})")
    if report.source_experts is not None:
        before, after = report.target.counts_before.active, report.target.counts_after.active
        table.add_row("active parameters", f"{before:,}", f"{after:,} ({after / before:.1%})")
    for key in src:
        table.add_row(key, str(src[key]), str(dst[key]))
    if report.source_experts is not None:
        before, after = report.source_experts.as_dict(), report.target.experts.as_dict()
        for key in before:
            table.add_row(key, str(before[key]), str(after[key]))
    console.print(table)
    console.print(f"shape: {report.target.reason}")
    for when, loads in report.utilisation.items():
        console.print(f"expert utilisation {when} pruning: {describe_loads(loads)}")
    if report.dropped_layers:
        console.print(f"dropped layers: {report.dropped_layers}")
    console.print("time: " + ", ".join(f"{k} {v:.1f}s" for k, v in report.seconds.items()))
    console.print(f"wrote {report.out_dir}")
