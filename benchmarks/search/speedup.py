"""The Llama-3.1-8B shape under ``--target-speedup 2.0 --at-batch 64``: what the search proposes
per GPU (dry run, config only) and, after ``minitron bench`` timed them, predicted against
measured speedup.

    python benchmarks/search/speedup.py propose OUT --gpus h100 h200
    python benchmarks/search/speedup.py models OUT --per-gpu 2      # bench --models arguments
    python benchmarks/search/speedup.py compare OUT BENCH_DIR       # writes OUT/predicted_vs_measured.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from minitron_deploy.bench.models import ModelSpec, model_config
from minitron_deploy.search import SearchSettings, search_student

TARGET, BATCH = 2.0, 64


def propose(out: Path, gpus: list[str], isl: int, osl: int) -> None:
    """``OUT/llama31-8b/config.json`` and a dry run per GPU in ``OUT/dry-<gpu>``."""
    source = out / "llama31-8b"
    model_config(ModelSpec("llama31-8b")).save_pretrained(str(source))
    for gpu in gpus:
        settings = SearchSettings(target_speedup=TARGET, at_batch=BATCH, gpu=gpu, isl=isl,
                                  osl=osl)
        result = search_student(source, out / f"dry-{gpu}", settings, dry_run=True)
        print(f"{gpu}: {len(result.report['candidates'])} candidates")
        for row in result.report["candidates"]:
            print(f"  {row['key']:28s} {row['axes']:6s} {row['params'] / 1e9:.2f}B "
                  f"predicted {row['speedup']:.3f}x")


def _dry_runs(out: Path) -> dict[str, dict]:
    return {p.name.removeprefix("dry-"): json.loads((p / "search.json").read_text())
            for p in sorted(out.glob("dry-*"))}


def models(out: Path, per_gpu: int) -> None:
    """The config-only folders to time: the ``per_gpu`` candidates closest to the target."""
    folders: dict[str, Path] = {}
    for gpu, report in _dry_runs(out).items():
        for row in report["candidates"][:per_gpu]:
            folders.setdefault(row["key"], out / f"dry-{gpu}" / "configs" / row["key"])
    print(" ".join(str(f) for f in folders.values()))


def compare(out: Path, bench_dir: Path) -> None:
    """Measured speedup (output tok/s over the 8B's at the same batch) against predicted."""
    bench = json.loads((bench_dir / "bench.json").read_text())
    tok_s = {(r["model"], r["batch"]): r["metrics"]["output_tok_s"] for r in bench["runs"]}
    base = tok_s[("llama31-8b", BATCH)]
    rows = []
    for gpu, report in _dry_runs(out).items():
        for row in report["candidates"]:
            measured = tok_s.get((row["key"], BATCH))
            if measured is not None:
                rows.append({"gpu_predicted_for": gpu, "key": row["key"], "axes": row["axes"],
                             "params": row["params"], "predicted_speedup": row["speedup"],
                             "measured_speedup": measured / base, "output_tok_s": measured})
    result = {"target_speedup": TARGET, "batch": BATCH, "baseline_tok_s": base,
              "machine": bench["machine"], "measured_limits": bench["limits"],
              "settings": bench["settings"], "rows": rows}
    path = out / "predicted_vs_measured.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(f"{r['gpu_predicted_for']} {r['key']:28s} predicted {r['predicted_speedup']:.2f}x "
              f"measured {r['measured_speedup']:.2f}x")
    print(f"wrote {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    a = sub.add_parser("propose")
    a.add_argument("out", type=Path)
    a.add_argument("--gpus", nargs="+", default=["h100", "h200"])
    a.add_argument("--isl", type=int, default=512)
    a.add_argument("--osl", type=int, default=128)
    m = sub.add_parser("models")
    m.add_argument("out", type=Path)
    m.add_argument("--per-gpu", type=int, default=2)
    c = sub.add_parser("compare")
    c.add_argument("out", type=Path)
    c.add_argument("bench_dir", type=Path)
    args = p.parse_args()
    if args.step == "propose":
        propose(args.out, args.gpus, args.isl, args.osl)
    elif args.step == "models":
        models(args.out, args.per_gpu)
    else:
        compare(args.out, args.bench_dir)


if __name__ == "__main__":
    main()
