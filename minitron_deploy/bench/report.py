"""Benchmark report files: ``bench.json`` (everything), ``bench.md`` (table), PNG plots.

Each run names its weights' scheme (the dtype, or a quantized checkpoint's scheme and format)
and their bytes (parameters x dtype bytes, or the quantized checkpoint's weight files), so one
report shows a 16-bit teacher beside its FP8 student.

Speedups compare each model with the first one given: at matched batch sizes, and (with
``max_throughput``) each model's best throughput over its batch sizes against the first's.
"""

from __future__ import annotations

import json
from pathlib import Path


def add_speedups(report: dict) -> None:
    """Attach ``speedup_vs_first`` to every run and a ``max_throughput`` summary."""
    runs = report["runs"]
    if not runs:
        return
    first = runs[0]["model"]
    base = {(r["backend"], r["batch"]): r["metrics"]["output_tok_s"]
            for r in runs if r["model"] == first}
    for r in runs:
        ref = base.get((r["backend"], r["batch"]))
        r["speedup_vs_first"] = r["metrics"]["output_tok_s"] / ref if ref else None
    best: dict[tuple[str, str], dict] = {}
    for r in runs:
        key = (r["model"], r["backend"])
        if key not in best or r["metrics"]["output_tok_s"] > best[key]["metrics"]["output_tok_s"]:
            best[key] = r
    summary = []
    for (model, backend), r in best.items():
        ref = best.get((first, backend))
        summary.append({"model": model, "backend": backend, "batch": r["batch"],
                        "scheme": r.get("scheme"), "weight_bytes": r.get("weight_bytes"),
                        "output_tok_s": r["metrics"]["output_tok_s"],
                        "speedup_vs_first": r["metrics"]["output_tok_s"]
                        / ref["metrics"]["output_tok_s"] if ref else None})
    report["max_throughput"] = summary


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


_PREFIXES = ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def si_rate(value: float, unit: str) -> str:
    """``value`` to 3 significant digits under the largest SI prefix that keeps it at least
    1: ``si_rate(4e10, "FLOP/s")`` is ``"40 GFLOP/s"``."""
    scale, prefix = next(((s, p) for s, p in _PREFIXES if abs(value) >= s), (1, ""))
    return f"{value / scale:.3g} {prefix}{unit}"


def markdown(report: dict) -> str:
    s, m = report["settings"], report["machine"]
    lines = [f"# Throughput: ISL {s['isl']}, OSL {s['osl']}, {s['dtype']}, "
             f"{m.get('gpu', m['device'])}", ""]
    meta = report.get("meta", {})
    for key in ("command", "commit", "date"):
        if key in meta:
            lines.append(f"- {key}: `{meta[key]}`")
    lines += [f"- torch {m['torch']}, transformers {m['transformers']}"
              + (f", CUDA {m['cuda']}, driver {m['driver']}" if "cuda" in m else ""),
              f"- measured copy bandwidth "
              f"{si_rate(report['limits']['copy_bandwidth_bytes_s'], 'B/s')}, matmul "
              f"{si_rate(report['limits']['matmul_flops_s'], 'FLOP/s')} ({s['dtype']}); "
              f"median of {s['reps']} runs after {s['warmup']} warm-up", "",
              "| model | backend | batch | scheme | weights GB | out tok/s | req/s | TTFT ms "
              "| ITL ms | tok/s/user | peak GiB | decode % of limit | run % of limit "
              "| speedup vs first |",
              "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["runs"]:
        mt, lim = r["metrics"], r.get("limits", {})
        peak = r.get("peak_memory_bytes")
        dec, run = lim.get("decode_fraction"), lim.get("run_fraction")
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['batch']} | {r.get('scheme', '-')} "
            f"| {_fmt(r.get('weight_bytes') and r['weight_bytes'] / 1e9, '.2f')} "
            f"| {mt['output_tok_s']:.1f} "
            f"| {_fmt(mt['requests_s'], '.2f')} | {_fmt(mt['ttft_ms'], '.1f')} "
            f"| {_fmt(mt['itl_ms'], '.2f')} | {_fmt(mt['per_user_tok_s'], '.1f')} "
            f"| {_fmt(peak and peak / 2**30, '.1f')} | {_fmt(dec and 100 * dec, '.0f')} "
            f"| {_fmt(run and 100 * run, '.0f')} | {_fmt(r.get('speedup_vs_first'), '.2f')} |")
    if s.get("max_throughput") and report.get("max_throughput"):
        lines += ["", "Max throughput (each model at its best batch size):", "",
                  "| model | backend | batch | out tok/s | speedup vs first | scheme "
                  "| weights GB |",
                  "|---|---|---:|---:|---:|---|---:|"]
        for b in report["max_throughput"]:
            lines.append(f"| {b['model']} | {b['backend']} | {b['batch']} "
                         f"| {b['output_tok_s']:.1f} | {_fmt(b['speedup_vs_first'], '.2f')} "
                         f"| {b.get('scheme', '-')} "
                         f"| {_fmt(b.get('weight_bytes') and b['weight_bytes'] / 1e9, '.2f')} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, out_dir: Path) -> list[Path]:
    """tok/s vs batch per model (one line per model x backend), and speedup bars vs the first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    series: dict[str, list] = {}
    for r in runs:
        series.setdefault(f"{r['model']} [{r['backend']}]", []).append(
            (r["batch"], r["metrics"]["output_tok_s"]))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in series.items():
        points.sort()
        ax.plot(*zip(*points), marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("output tokens/s")
    ax.set_title(f"ISL {report['settings']['isl']}, OSL {report['settings']['osl']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths = [out_dir / "throughput_vs_batch.png"]
    fig.tight_layout()
    fig.savefig(paths[0], dpi=120)
    plt.close(fig)

    bars = [(f"{r['model']}\n[{r['backend']}] b{r['batch']}", r["speedup_vs_first"])
            for r in runs if r.get("speedup_vs_first") is not None]
    if report["settings"].get("max_throughput") and report.get("max_throughput"):
        bars = [(f"{b['model']}\n[{b['backend']}] b{b['batch']}", b["speedup_vs_first"])
                for b in report["max_throughput"] if b["speedup_vs_first"] is not None]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(bars)), 4.5))
    ax.bar(range(len(bars)), [v for _, v in bars], color="tab:green")
    ax.set_xticks(range(len(bars)), [name for name, _ in bars], fontsize=7, rotation=45,
                  ha="right")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_ylabel(f"speedup vs {runs[0]['model']}")
    fig.tight_layout()
    paths.append(out_dir / "speedup.png")
    fig.savefig(paths[1], dpi=120)
    plt.close(fig)
    return paths


def write_report(report: dict, out_dir: str | Path, plots: bool = True) -> list[Path]:
    """Write bench.json, bench.md and (unless ``plots`` is False) the PNGs into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    add_speedups(report)
    (out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "bench.md").write_text(markdown(report))
    return [out / "bench.json", out / "bench.md"] + (plot(report, out) if plots else [])
