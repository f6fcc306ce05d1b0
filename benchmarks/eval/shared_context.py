"""Zero-shot scoring with each question's context run once (its KV cache shared by the choices)
against one full sequence per choice, as lm-eval runs them: time per task, the largest
log-likelihood difference, and whether any prediction changes.

Both ways run in the same process, alternating, on the same items. Usage (repository root):

    python benchmarks/eval/shared_context.py --work /tmp/shared-context --limit 100 \\
        --out benchmarks/eval/results/shared_context.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from provenance import provenance  # noqa: E402

from minitron_deploy.arch.modeling import load_model  # noqa: E402
from minitron_deploy.data import assets  # noqa: E402
from minitron_deploy.eval.multiple_choice import loglikelihoods  # noqa: E402
from minitron_deploy.eval.tasks import load_named_task  # noqa: E402


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="builtin:smollm2-135m")
    p.add_argument("--work", type=Path, required=True, help="where a builtin model is unpacked")
    p.add_argument("--tasks", default="arc_easy,piqa,hellaswag")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each way per task")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args()


def _predictions(items, lls: list[float]) -> list[tuple[int, int]]:
    """Per item: the argmax choice, and the argmax after dividing by the choice's length."""
    out, pos = [], 0
    for item in items:
        ll = lls[pos:pos + len(item.continuations)]
        pos += len(item.continuations)
        normed = [x / max(1, len(k.removeprefix(" "))) for x, k in zip(ll, item.continuations)]
        out.append((max(range(len(ll)), key=ll.__getitem__),
                    max(range(len(normed)), key=normed.__getitem__)))
    return out


def main() -> None:
    args = _args()
    args.work.mkdir(parents=True, exist_ok=True)
    model_dir = (assets.resolve_checkpoint(args.model, args.work)
                 if args.model.startswith("builtin:") else Path(args.model))
    model, tokenizer = load_model(model_dir, dtype="fp32", device="cpu")
    rows = {}
    for task in args.tasks.split(","):
        items = load_named_task(task, args.limit)
        requests = [(c, k) for item in items for c, k in zip(item.contexts, item.continuations)]
        seconds: dict[bool, list[float]] = {True: [], False: []}
        lls = {}
        for _ in range(args.repeats):
            for share in (False, True):
                start = time.perf_counter()
                lls[share] = loglikelihoods(model, tokenizer, requests, args.batch_size, share)
                seconds[share].append(time.perf_counter() - start)
        best = {share: min(s) for share, s in seconds.items()}
        changed = sum(a != b for a, b in zip(_predictions(items, lls[True]),
                                             _predictions(items, lls[False])))
        rows[task] = {"items": len(items), "requests": len(requests),
                      "seconds_per_choice": best[False], "seconds_shared": best[True],
                      "speedup": best[False] / best[True],
                      "max_abs_ll_difference": max(abs(a - b) for a, b in
                                                   zip(lls[True], lls[False])),
                      "items_with_a_changed_prediction": changed}
        print(task, json.dumps(rows[task]))
    result = {"model": args.model, "limit": args.limit, "batch_size": args.batch_size,
              "repeats": args.repeats, "tasks": rows, **provenance()}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
