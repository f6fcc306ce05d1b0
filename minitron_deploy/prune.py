"""Pruning: the in-memory step shared with the ModelOpt mode, and the checkpoint-to-checkpoint
pipeline behind ``minitron prune``."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from . import __version__
from .artifacts import PRUNING_RECORD, SCORES
from .data import calibration_batches
from .errors import MinitronError
from .eval.multiple_choice import load_task
from .hub import resolve_model
from .importance.criteria import check_settings
from .importance.layerwise import check_streamable, resolve_offload
from .importance.scores import ImportanceScores
from .modeling import (DTYPES, check_not_inside, check_output_dir, load_config, load_model,
                       save_checkpoint_atomic)
from .precision import resolve_precision
from .scoring import ScoringSettings, score_model
from .select import build_plan
from .shape import ModelShape, count_params
from .target import ResolvedTarget, TargetSpec, resolve_target
from .trim import KeepPlan, resolve_rescale_norms, trim_model


def prune_model(model: nn.Module, scores: ImportanceScores, target: ResolvedTarget,
                depth_metric: str = "loss", rescale_norms: bool | None = None) -> KeepPlan:
    """Trim ``model`` in place to ``target`` using ``scores``; returns the kept indices."""
    source = ModelShape.from_config(model.config)
    scores.check_matches(source)
    plan = build_plan(scores, source, target, depth_metric)
    trim_model(model, plan, rescale_norms=rescale_norms)
    return plan


@dataclass
class PruneReport:
    """What ``prune`` did, for the summary table and ``minitron/minitron.json``."""

    out_dir: Path
    source_shape: ModelShape
    target: ResolvedTarget
    dropped_layers: list[int]
    seconds: dict[str, float] = field(default_factory=dict)


def prune(model_dir: str | Path, out_dir: str | Path, spec: TargetSpec, *,
          calib: str | Path | None = None, scores_path: str | Path | None = None,
          settings: ScoringSettings = ScoringSettings(), calib_samples: int = 1024,
          seq_len: int = 512, batch_size: int = 8, task: str | None = None,
          task_limit: int | None = 200, device: str = "cpu", dtype: str = "auto",
          rescale_norms: bool | None = None, seed: int = 0, offload: str = "auto") -> PruneReport:
    """Prune the checkpoint in ``model_dir`` (a folder or Hub id) to ``spec`` and write a
    stock HF checkpoint.

    Scores come from ``scores_path`` if given, else from calibrating on ``calib`` with
    ``settings.criterion`` (activation, magnitude, random, mini-llm, loss-delta); either way
    they are written to ``out_dir/minitron/importance.safetensors`` for reuse with other targets
    (``scores_path`` may name that file or a folder pruned before).
    ``offload`` ("none", "layer", "auto") keeps the weights on the CPU and calibrates one layer
    at a time on ``device`` (see :func:`~minitron_deploy.scoring.score_model`).
    Every check on the request runs before any weight is loaded.
    """
    times: dict[str, float] = {}
    start = time.perf_counter()
    model_dir = resolve_model(model_dir)
    dtype = resolve_precision(device, dtype)
    check_settings(settings)
    config = load_config(model_dir)
    source = ModelShape.from_config(config)
    target = resolve_target(config, spec)
    rescale_norms = resolve_rescale_norms(config, rescale_norms)
    out = check_output_dir(out_dir, model_dir)
    scores = ImportanceScores.load(scores_path) if scores_path else None
    if scores is not None:
        scores.check_matches(source)
        held = scores.meta.get("criterion", "activation")
        if held != settings.criterion:
            raise MinitronError(f"the scores file holds {held!r} scores, not "
                                f"{settings.criterion!r}; pass --criterion {held} to use them")
    elif calib is None:
        raise MinitronError("give calibration data (--calib) or precomputed scores (--scores)")
    elif not Path(calib).exists():
        raise MinitronError(f"calibration data {calib} does not exist")
    block = source.num_layers - target.shape.num_layers
    if target.drop_layers is None and block > 0 and scores is not None \
            and scores.depth(settings.depth_metric, block) is None:
        raise MinitronError(f"the scores hold no '{settings.depth_metric}' depth scores for "
                            f"blocks of {block} layers")
    needs_depth_scores = scores is None and target.drop_layers is None and block > 0
    offload = _resolve_offload(offload, device, target.params_before, dtype)
    if offload == "layer" and scores is None:
        check_streamable(settings, depth_scored=needs_depth_scores)
    items = load_task(task or "winogrande", task_limit) \
        if settings.depth_metric == "accuracy" and needs_depth_scores else None

    model, tokenizer = load_model(model_dir, dtype=dtype,
                                  device="cpu" if offload == "layer" else device)
    times["load"] = time.perf_counter() - start
    if scores is None:
        t0 = time.perf_counter()
        scores = _calibrate(model, tokenizer, model_dir, calib, settings, sorted({1, max(block, 1)}),
                            items, calib_samples, seq_len, batch_size, seed,
                            depth_block_sizes=[block] if needs_depth_scores else [],
                            offload=offload, device=device)
        times["score"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    plan = prune_model(model, scores, target, settings.depth_metric, rescale_norms)
    times["trim"] = time.perf_counter() - t0
    dropped = [i for i in range(source.num_layers) if i not in set(plan.layers)]
    record = {
        "minitron_deploy_version": __version__,
        "source": str(Path(model_dir).resolve()),
        "criterion": scores.meta.get("criterion", "activation"),
        "depth_metric": settings.depth_metric,
        "scores_settings": scores.meta,
        "request": {k: v for k, v in asdict(spec).items() if v is not None},
        "source_shape": source.as_dict(),
        "target_shape": target.shape.as_dict(),
        "reason": target.reason,
        "align": target.align.as_dict(),
        "params_before": target.params_before,
        "params_after": target.params_after,
        "dropped_layers": dropped,
        "rescale_norms": rescale_norms,
        "kept": plan.to_json(),
    }
    t0 = time.perf_counter()
    save_checkpoint_atomic(model, out, source_dir=model_dir, extra_json={PRUNING_RECORD: record},
                           write_artifacts=lambda folder: scores.save(folder / SCORES))
    times["save"] = time.perf_counter() - t0
    times["total"] = time.perf_counter() - start
    return PruneReport(out_dir=out, source_shape=source, target=target, dropped_layers=dropped,
                       seconds=times)


def _calibrate(model, tokenizer, model_dir, calib, settings: ScoringSettings, block_sizes,
               items, calib_samples: int, seq_len: int, batch_size: int,
               seed: int, depth_block_sizes=None, offload: str = "none",
               device: str = "cpu") -> ImportanceScores:
    if tokenizer is None:
        raise MinitronError(f"{model_dir} has no tokenizer to tokenize the calibration data")
    batches = calibration_batches(calib, tokenizer, calib_samples, seq_len, batch_size, seed)
    scores = score_model(model, batches, settings, block_sizes=block_sizes, tokenizer=tokenizer,
                         task_items=items, depth_block_sizes=depth_block_sizes,
                         offload=offload, device=device)
    scores.meta.update(source=str(Path(model_dir).resolve()), calib=str(calib))
    return scores


def score_checkpoint(model_dir: str | Path, out_path: str | Path, *, calib: str | Path,
                     settings: ScoringSettings = ScoringSettings(),
                     block_sizes: list[int] = (1,), calib_samples: int = 1024,
                     seq_len: int = 512, batch_size: int = 8, task: str | None = None,
                     task_limit: int | None = 200, device: str = "cpu", dtype: str = "auto",
                     seed: int = 0, offload: str = "auto") -> Path:
    """Compute and save the importance artifact of a checkpoint (``minitron score``)."""
    model_dir = resolve_model(model_dir)
    dtype = resolve_precision(device, dtype)
    check_settings(settings)
    config = load_config(model_dir)
    check_not_inside(out_path, model_dir)
    if calib is None or not Path(calib).exists():
        raise MinitronError(f"calibration data {calib} does not exist")
    offload = _resolve_offload(offload, device, count_params(config), dtype)
    if offload == "layer":
        check_streamable(settings, depth_scored=True)
    items = load_task(task or "winogrande", task_limit) \
        if settings.depth_metric == "accuracy" else None
    model, tokenizer = load_model(model_dir, dtype=dtype,
                                  device="cpu" if offload == "layer" else device)
    scores = _calibrate(model, tokenizer, model_dir, calib, settings, block_sizes, items,
                        calib_samples, seq_len, batch_size, seed, offload=offload, device=device)
    return scores.save(out_path)


def _resolve_offload(offload: str, device: str, params: int, dtype: str) -> str:
    """The offload mode for a model of ``params`` weights in ``dtype``, before loading it."""
    if dtype not in DTYPES:
        raise MinitronError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    return resolve_offload(offload, device, params * DTYPES[dtype].itemsize)
