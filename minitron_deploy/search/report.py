"""The search report: ``search.json``, ``search.md`` and ``search.png`` (predicted speedup
against held-out loss, the Pareto frontier marked)."""

from __future__ import annotations

from pathlib import Path

from ..core.files import write_json_atomic, write_text_atomic

JSON, MARKDOWN, PLOT = "search.json", "search.md", "search.png"


def loss_of(row: dict) -> float | None:
    """The loss a candidate is compared by: after the short distillation when it had one."""
    return row["loss_kd"] if row.get("loss_kd") is not None else row.get("loss_pruned")


def ranked_stage(rank_by: str) -> str:
    """Which loss chose the candidate: right after pruning, or after the short KD."""
    return "pruned" if rank_by == "loss" else "kd"


def pareto_front(rows: list[dict]) -> list[dict]:
    """Rows no other row beats on both predicted speedup (higher) and loss (lower)."""
    scored = [r for r in rows if loss_of(r) is not None]
    return [r for r in scored
            if not any(o["speedup"] >= r["speedup"] and loss_of(o) <= loss_of(r)
                       and (o["speedup"], loss_of(o)) != (r["speedup"], loss_of(r))
                       for o in scored)]


def _number(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def markdown(report: dict) -> str:
    goal, d = report["goal"], report["deployment"]
    low, high = goal["window"]
    moe = report.get("source_active_params", report["source_params"]) != report["source_params"]
    active = f" ({report['source_active_params']:,} active)" if moe else ""
    lines = [f"# Student search: {Path(report['model']).name}", "",
             f"- goal: {goal['kind']} in [{low:,.4g}, {high:,.4g}] "
             f"(tolerance {goal['tolerance']:.0%}); source {report['source_params']:,} "
             f"parameters{active}",
             f"- predictions: {d['gpu']} ({report['gpu_numbers']}), batch {d['batch']}, "
             f"isl {d['isl']}, osl {d['osl']}; weights as each scheme stores them, "
             f"{d['dtype_bytes']}-byte KV cache",
             f"- bounds: width <= {report['bounds']['max_width']:.0%}, depth <= "
             f"{report['bounds']['max_depth']:.0%}; alignment {report['align']}",
             f"- ranked by {report['rank_by']} (top {report['top_k']} distilled for "
             f"{report['rank_tokens']:,} tokens)" if report["rank_by"] != "loss"
             else "- ranked by loss right after pruning"]
    if moe:
        lines.append("- mixture of experts: every expert stays in memory; a token computes with "
                     "its top-k (active parameters); decode reads the experts the batch routes "
                     "to (uniform routing assumed)")
    if report.get("rule"):
        rule = report["rule"]
        s = rule["shape"]
        experts = (f", {s['num_experts']} experts of {s['moe_ffn_hidden_size']}"
                   if "num_experts" in s else "")
        lines.append(f"- the --target-{goal['kind'].replace('_', '-')} rule picks hidden "
                     f"{s['hidden_size']}, FFN {s['ffn_hidden_size']}, heads {s['num_heads']}, "
                     f"layers {s['num_layers']}{experts} ({rule['params']:,} parameters, "
                     f"speedup {rule['speedup']:.2f}x)")
    schemes = report["schemes"]
    if schemes != ["bf16"]:
        lines.append(f"- precisions: {', '.join(schemes)}; a shape's precisions share its losses "
                     "(those of the 16-bit student: quantization error is not measured) and the "
                     "chosen shape gets the least compressed precision that meets the goal; "
                     "speedups scale decode by weight bytes at the bf16 compute rate (a model, "
                     "not a measurement)")
    if report.get("chosen"):
        lines.append(f"- chosen: **{report['chosen']}** ({report['chosen_scheme']})")
    if report.get("tied_with_chosen"):
        lines.append(f"- within two standard errors of the chosen (paired over the held-out "
                     f"sequences): {', '.join(report['tied_with_chosen'])}; the ranking does "
                     "not separate them (more --rank-tokens or --heldout-seqs would)")
    stage = ranked_stage(report["rank_by"])
    has_task = any(r.get("task") is not None for r in report["candidates"])
    lines += ["", "| candidate | axes | scheme | params | "
              + ("active params | expert GiB | " if moe else "")
              + "weights GiB | memory GiB | speedup | loss pruned | loss KD | "
              f"loss {'KD' if stage == 'kd' else 'pruned'} - chosen |"
              + (" task |" if has_task else ""),
              "|---|---|---|---:|" + ("---:|---:|" if moe else "")
              + "---:|---:|---:|---:|---:|---:|" + ("---:|" if has_task else "")]
    for r in report["candidates"]:
        name = f"**{r['key']}**" if r.get("chosen") else r["key"]
        experts = (f"{r['active_params']:,} | {r['expert_bytes'] / 2**30:.3f} | "
                   if moe else "")
        lines.append(f"| {name} | {r['axes']} | {r['scheme']} | {r['params']:,} | {experts}"
                     f"{r['weight_bytes'] / 2**30:.3f} | {r['memory_gib']:.2f} | "
                     f"{r['speedup']:.2f} | {_number(r['loss_pruned'], '.4f')} | "
                     f"{_number(r['loss_kd'], '.4f')} | {_gap(r, stage)} |"
                     + (f" {_number(r['task'], '.3f')} |" if has_task else ""))
    return "\n".join(lines) + "\n"


def _gap(row: dict, stage: str) -> str:
    gap = row.get(f"gap_{stage}")
    if gap is None or row.get("chosen"):
        return ""
    return f"{gap:+.4f} ± {row[f'gap_{stage}_stderr']:.4f}"


def plot(report: dict, path: Path) -> Path:
    """Predicted speedup against loss (against parameters before any loss is known)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = report["candidates"]
    scored = [r for r in rows if loss_of(r) is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if scored:
        ax.scatter([loss_of(r) for r in scored], [r["speedup"] for r in scored],
                   c=["C1" if r.get("loss_kd") is not None else "C0" for r in scored], s=25)
        front = sorted(pareto_front(rows), key=loss_of)
        ax.step([loss_of(r) for r in front], [r["speedup"] for r in front], where="post",
                color="C3", label="Pareto frontier")
        for r in scored:
            if r.get("chosen"):
                ax.scatter([loss_of(r)], [r["speedup"]], marker="*", s=250, color="C2",
                           label=f"chosen {r['key']}", zorder=3)
        ax.set_xlabel("held-out loss (orange: after short KD, blue: right after pruning)")
        ax.legend()
    else:
        ax.scatter([r["params"] / 1e6 for r in rows], [r["speedup"] for r in rows], s=25)
        ax.set_xlabel("parameters (millions)")
    d = report["deployment"]
    ax.set_ylabel(f"predicted speedup ({d['gpu']}, batch {d['batch']})")
    ax.grid(alpha=0.3)
    ax.set_title(f"{Path(report['model']).name}: {len(rows)} candidates")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(report: dict, folder: Path) -> list[Path]:
    """``search.json``, ``search.md`` and ``search.png`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return [write_json_atomic(folder / JSON, report),
            write_text_atomic(folder / MARKDOWN, markdown(report)),
            plot(report, folder / PLOT)]
