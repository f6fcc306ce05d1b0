"""Greedy parity of vLLM (its CPU build, fp32) with transformers on pruned models: the tiny
families of tests/test_vllm.py pruned by width, depth and KV groups, and with ``--smollm2`` the
demo teacher SmolLM2-135M pruned the same three ways. Writes ``greedy_parity.json`` (every
prompt) and ``greedy_parity.md`` (per model, the first differing position and logprob gaps).

    python benchmarks/vllm/greedy_parity.py --smollm2 --out benchmarks/vllm/results
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoTokenizer

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "tests")]

from test_vllm import NEW_TOKENS, VARIANTS, build_models, prompts  # noqa: E402

from minitron_deploy.arch.modeling import load_model  # noqa: E402
from minitron_deploy.core.shape import ModelShape  # noqa: E402
from minitron_deploy.data.assets import materialize_smollm2  # noqa: E402
from minitron_deploy.pruning.trim import KeepPlan, trim_model  # noqa: E402
from minitron_deploy.serve.parity import greedy_parity, summary  # noqa: E402

SMOLLM2_TEXTS = ["The capital of France is", "def fibonacci(n):",
                 "Structured pruning removes whole neurons, heads and layers, so",
                 "Once upon a time, in a small village by the sea,"]


def smollm2_models(work: Path) -> dict[str, Path]:
    """SmolLM2-135M and first-k pruned copies: hidden 576 -> 432 and MLP 1536 -> 1024 (width),
    layers 30 -> 24 (depth, the last six dropped but the final one), KV groups 3 -> 2 (gqa)."""
    teacher = materialize_smollm2(work / "smollm2-135m")
    out = {"smollm2": teacher}
    for variant in VARIANTS:
        model, tokenizer = load_model(teacher)
        plan = KeepPlan.keep_all(ModelShape.from_config(model.config))
        if variant == "width":
            plan.hidden = torch.arange(432)
            plan.mlp = {i: torch.arange(1024) for i in plan.layers}
        elif variant == "depth":
            plan.layers = list(range(23)) + [29]
        else:
            plan.heads = {i: torch.arange(6) for i in plan.layers}
            plan.kv_heads = {i: torch.arange(2) for i in plan.layers}
        trim_model(model, plan)
        path = work / f"smollm2-{variant}"
        model.save_pretrained(str(path))
        tokenizer.save_pretrained(str(path))
        out[f"smollm2-{variant}"] = path
    return out


def _cpu() -> str:
    """The CPU's model name and logical core count."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{names[0] if names else platform.machine()}, {os.cpu_count()} logical cores"


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


def _table(rows: list[tuple[str, list]]) -> list[str]:
    lines = ["| model | prompts identical | first diff (token) | max chosen-token logprob gap "
             "| transformers margin at diff | vLLM margin at diff |", "|---|---|---|---|---|---|"]
    for name, results in rows:
        s = summary(results)
        margins = [(p.hf_margin, p.vllm_margin) for p in results if not p.identical]
        lines.append(f"| {name} | {s['identical']}/{s['prompts']} | "
                     f"{'-' if s['earliest_diff'] is None else s['earliest_diff']} | "
                     f"{s['max_logprob_gap']:.2e} | "
                     f"{', '.join(_fmt(h) for h, _ in margins) or '-'} | "
                     f"{', '.join(_fmt(v) for _, v in margins) or '-'} |")
    return lines


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vllm-parity-") as tmp:
        tiny = {f"{f}-{v}": p for (f, v), p in build_models(Path(tmp)).items()}
        groups = [("tiny", tiny, prompts(), NEW_TOKENS, 1)]
        if args.smollm2:
            models = smollm2_models(Path(args.work))
            tokenizer = AutoTokenizer.from_pretrained(str(models["smollm2"]))
            groups.append(("smollm2", models, [tokenizer(t)["input_ids"] for t in SMOLLM2_TEXTS],
                           args.smollm2_tokens, None))
        record = {"command": shlex.join(["python", *sys.argv]), "commit": _commit(),
                  "date": datetime.datetime.now(datetime.timezone.utc)
                  .isoformat(timespec="seconds"),
                  "machine": {"cpu": _cpu(),
                              "python": platform.python_version(), "torch": torch.__version__},
                  "dtype": "fp32", "groups": {}}
        md = []
        for name, models, ids, new_tokens, threads in groups:
            results, failed, engine = greedy_parity([str(p) for p in models.values()], ids,
                                                    new_tokens, threads=threads)
            record["engine"] = engine
            by_model = [(label, [r for r in results if r.model == str(path)])
                        for label, path in models.items()]
            record["groups"][name] = {"new_tokens": new_tokens, "prompts": ids,
                                      "failed": {Path(k).name: v for k, v in failed.items()},
                                      "summary": summary(results),
                                      "results": [dict(r.as_dict(), model=Path(r.model).name)
                                                  for r in results]}
            md += [f"## {name}: {len(ids)} prompts, {new_tokens} greedy tokens", "",
                   *_table(by_model), ""]
            md += [f"- vLLM could not run {Path(k).name}: {v}" for k, v in failed.items()]
    header = ["# vLLM vs transformers greedy tokens (fp32)", "",
              f"- command: `{record['command']}`", f"- commit: `{record['commit']}`",
              f"- date: {record['date']}",
              f"- machine: {record['machine']['cpu']}, {platform.system()}, torch "
              f"{record['machine']['torch']}; vLLM {record['engine']['vllm']} on "
              f"{record['engine']['device']}", "",
              "Margins are logprob(own token) - logprob(the other side's token) at the first "
              "differing position: small margins mean a near tie that rounding decided.", ""]
    (out / "greedy_parity.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "greedy_parity.md").write_text("\n".join(header + md) + "\n")
    print("\n".join(header + md))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "vllm" / "results"))
    parser.add_argument("--smollm2", action="store_true", help="add SmolLM2-135M and its prunes")
    parser.add_argument("--smollm2-tokens", type=int, default=32)
    parser.add_argument("--work", default="/tmp/vllm-parity-work",
                        help="where the SmolLM2 checkpoints are written (reused)")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
