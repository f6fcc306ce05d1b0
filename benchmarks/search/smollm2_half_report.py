"""Markdown tables of ``smollm2_half.py``'s result: every candidate's held-out loss after
pruning and after each distillation budget, the Spearman agreement of each ranking with the
longest budget's, and the compared students' perplexity and task accuracy with standard
errors. Usage (repository root):

    python benchmarks/search/smollm2_half_report.py benchmarks/search/results/smollm2_half.json

writes ``smollm2_half.md`` beside the JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _shape(shape: dict) -> str:
    return (f"h{shape['hidden_size']}-f{shape['ffn_hidden_size']}-a{shape['num_heads']}"
            f"-kv{shape['num_kv_heads']}-l{shape['num_layers']}")


def _machine(m: dict) -> str:
    return (f"{m['cpu_count']}-core {m['host_cpu']} CPU ({m['cpu_capability']}), torch "
            f"{m['torch']}, transformers {m['transformers']}, load average "
            f"{m['load_avg_1m']:.1f}")


def _ranking_table(result: dict) -> list[str]:
    spearman = result["spearman"]
    losses = spearman["losses"]
    columns = list(losses)
    reference = losses[spearman["reference"]]
    rows = {r["key"]: r for r in result["search"]["candidates"]}
    rule_key = next((k for k, r in rows.items() if r["shape"] == result["search"]["rule"]["shape"]),
                    None)
    lines = ["| candidate | params | " + " | ".join(f"loss {c}" for c in columns) + " |",
             "|---|---:|" + "---:|" * len(columns)]
    for key in sorted(reference, key=reference.get):
        marks = [m for m, hit in (("rule", key == rule_key),
                                  ("searched", key == result["search"]["chosen"])) if hit]
        label = f"{key} ({', '.join(marks)})" if marks else key
        best = {c: min(losses[c].values()) for c in columns}
        cells = [f"**{losses[c][key]:.3f}**" if losses[c][key] == best[c] else
                 f"{losses[c][key]:.3f}" for c in columns]
        lines.append(f"| {label} | {rows[key]['params'] / 1e6:.1f}M | " + " | ".join(cells)
                     + " |")
    lines += ["", f"Spearman against the ranking {spearman['reference']}: " + ", ".join(
        f"{name} {rho:+.2f}" for name, rho in spearman["spearman"].items()) + "."]
    return lines


def _cell(metrics: dict, task: str) -> str:
    if task == "ppl":
        err = metrics.get("ppl_stderr")
        return f"{metrics['ppl']:.1f}" + (f" ± {err:.1f}" if err is not None else "")
    got = metrics[task]
    return f"{100 * got['acc_norm']:.1f} ± {100 * got['acc_norm_stderr']:.1f}"


def _students_table(result: dict) -> list[str]:
    final, tasks = result["final"], result["tasks"]
    header = ["ppl" if t == "ppl" else f"{t} acc_norm %" for t in tasks]
    lines = ["| model | shape | ppl after pruning | " + " | ".join(header) + " |",
             "|---|---|---:|" + "---:|" * len(tasks)]
    for name in ("searched", "rule", "runner_up"):
        if name in final:
            row = final[name]
            lines.append(f"| {name.replace('_', '-')} | {_shape(row['shape'])} | "
                         f"{_cell(row['pruned'], 'ppl')} | "
                         + " | ".join(_cell(row["distilled"], t) for t in tasks) + " |")
    lines.append("| teacher | | | " + " | ".join(_cell(final["teacher"], t) for t in tasks)
                 + " |")
    return lines


def report(result: dict) -> str:
    """The study's tables as Markdown."""
    search = result["search"]
    head = ["# SmolLM2-135M at half the parameters: searched against the rule's student", "",
            f"Commit {result['commit']}, {result['date'][:10]}, {_machine(result['machine'])}.",
            "",
            f"The search ({search['rank_tokens']:,}-token short distillation of its best "
            f"{search['top_k']} by loss after pruning) chose {search['chosen']}; "
            f"the rule's shape is {_shape(search['rule']['shape'])}.", ""]
    body = (["## Ranking of every candidate", ""] + _ranking_table(result) + [""]
            if result.get("spearman") else [])
    body += [f"## Students after {result['final_tokens']:,} distillation tokens", "",
             f"Held-out perplexity (± standard error over sequences) and zero-shot acc_norm "
             f"(± standard error) on {result['task_limit']} items per task.", ""]
    return "\n".join(head + body + _students_table(result)) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("result", type=Path)
    path = p.parse_args().result
    out = path.with_suffix(".md")
    out.write_text(report(json.loads(path.read_text())))
    print(out)


if __name__ == "__main__":
    main()
