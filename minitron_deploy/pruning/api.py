"""Pruning: the in-memory step shared with the ModelOpt mode, and the checkpoint-to-checkpoint
pipeline behind ``minitron prune``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from .._version import __version__
from ..arch import ExpertShape, MoEAdapter, get_adapter
from ..arch.modeling import (
    DTYPES,
    check_not_inside,
    check_output_dir,
    load_config,
    load_model,
    save_checkpoint_atomic,
)
from ..arch.quantized import refuse_quantized
from ..core.artifacts import PRUNING_RECORD, SCORES
from ..core.errors import MinitronError
from ..core.hub import resolve_model
from ..core.precision import resolve_device, resolve_precision
from ..core.schema import Schema
from ..core.shape import ModelShape, count_params
from ..data.text import calibration_batches, check_texts
from ..eval.tasks import load_task
from ..importance.depth import first_samples
from ..importance.experts import expert_loads
from ..importance.layerwise import check_streamable, resolve_offload
from ..importance.scores import ImportanceScores
from .scoring import ScoringSettings, score_model
from .select import build_plan
from .settings import PruneSettings
from .target import ResolvedTarget, resolve_target
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
    #: Mixture-of-experts models: the source's experts, and each sparse layer's expert shares
    #: of the routed calibration tokens before and (when calibrated) after pruning.
    source_experts: ExpertShape | None = None
    utilisation: dict[str, dict[int, list[float]]] = field(default_factory=dict)


def prune(model_dir: str | Path, out_dir: str | Path, settings: Schema | None = None, *,
          calib: str | Path | None = None, device: str = "auto", dtype: str = "auto",
          **overrides) -> PruneReport:
    """Prune the checkpoint in ``model_dir`` (a folder or Hub id) and write a stock HF
    checkpoint to ``out_dir``.

    ``settings`` (a :class:`PruneSettings`, or a :class:`TargetSpec` / :class:`ScoringSettings`
    part of one) and ``overrides`` (any of PruneSettings' fields by name, e.g.
    ``target_params=0.5, criterion="magnitude"``) make the settings, checked by the schema.
    Scores come from ``settings.scores`` if given (checked against the criterion, its settings
    and these very weights), else from calibrating on ``calib`` (its ``settings.text_column``,
    and ``settings.split`` of a DatasetDict folder); either way they are written
    to ``out_dir/minitron/importance.safetensors`` for reuse with other targets. Every check on
    the request runs before any weight is loaded, except the weights fingerprint. ``device``
    "auto" is CUDA when a GPU is visible, else the CPU.
    """
    settings = PruneSettings.make(settings, **overrides)
    times: dict[str, float] = {}
    start = time.perf_counter()
    device = resolve_device(device)
    model_dir = resolve_model(model_dir)
    refuse_quantized("prune", model=model_dir)
    dtype = resolve_precision(device, dtype)
    config = load_config(model_dir)
    source = ModelShape.from_config(config)
    target = resolve_target(config, settings)
    rescale_norms = resolve_rescale_norms(config, settings.rescale())
    out = check_output_dir(out_dir, model_dir)
    block = source.num_layers - target.shape.num_layers
    chosen_block = block if target.drop_layers is None and block > 0 else 0
    scores = ImportanceScores.load(settings.scores) if settings.scores else None
    if scores is not None:
        scores.check_reuse(settings, source, chosen_block)
    elif calib is None:
        raise MinitronError("give calibration data (calib) or scores to reuse (scores)")
    elif not Path(calib).exists():
        raise MinitronError(f"calibration data {calib} does not exist")
    else:
        check_texts(calib, settings.text_column, settings.split)
    needs_depth_scores = scores is None and chosen_block > 0
    offload = _resolve_offload(settings.offload, device, target.params_before, dtype)
    if offload == "layer" and scores is None:
        check_streamable(settings, depth_scored=needs_depth_scores)
    items = load_task(settings.task or "winogrande", settings.task_limit) \
        if settings.depth_metric == "accuracy" and needs_depth_scores else None

    model, tokenizer = load_model(model_dir, dtype=dtype,
                                  device="cpu" if offload == "layer" else device)
    times["load"] = time.perf_counter() - start
    batches: list = []
    if scores is not None:
        scores.check_weights(model)
    else:
        t0 = time.perf_counter()
        scores, batches = _calibrate(model, tokenizer, model_dir, calib, settings,
                                     sorted({1, max(block, 1)}), items,
                                     depth_block_sizes=[block] if needs_depth_scores else [],
                                     offload=offload, device=device)
        times["score"] = time.perf_counter() - t0
    adapter = get_adapter(config)
    source_experts = adapter.expert_shape(config) if isinstance(adapter, MoEAdapter) else None

    t0 = time.perf_counter()
    plan = prune_model(model, scores, target, settings.depth_metric, rescale_norms)
    times["trim"] = time.perf_counter() - t0
    dropped = [i for i in range(source.num_layers) if i not in set(plan.layers)]
    utilisation = _utilisation(model, scores, batches, settings) if source_experts else {}
    record = {
        "minitron_deploy_version": __version__,
        "source": str(Path(model_dir).resolve()),
        "criterion": scores.meta.get("criterion", "activation"),
        "depth_metric": settings.depth_metric,
        "scores_settings": scores.meta,
        "settings": settings.record(),
        "request": settings.request(),
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
    if source_experts is not None:
        record["experts"] = {"source": source_experts.as_dict(),
                             "target": target.experts.as_dict(),
                             "active_params_before": target.counts_before.active,
                             "active_params_after": target.counts_after.active,
                             "expert_criterion": scores.meta.get("expert_criterion"),
                             "utilisation": {k: {str(i): v for i, v in d.items()}
                                             for k, d in utilisation.items()}}
    t0 = time.perf_counter()
    save_checkpoint_atomic(model, out, source_dir=model_dir, extra_json={PRUNING_RECORD: record},
                           write_artifacts=lambda folder: scores.save(folder / SCORES))
    times["save"] = time.perf_counter() - t0
    times["total"] = time.perf_counter() - start
    return PruneReport(out_dir=out, source_shape=source, target=target, dropped_layers=dropped,
                       seconds=times, source_experts=source_experts, utilisation=utilisation)


def _utilisation(model, scores: ImportanceScores, batches: list,
                 settings: PruneSettings) -> dict[str, dict[int, list[float]]]:
    """Expert shares of the routed tokens per sparse layer: ``before`` from the scores (source
    layer indices), ``after`` on the pruned ``model`` over the calibration batches (up to
    ``depth_samples`` samples; new layer indices), when there are batches."""
    out = {"before": {int(k.split(".")[1]): t.tolist() for k, t in scores.tensors.items()
                      if k.startswith("expert_load.")}}
    if batches:
        loads = expert_loads(model, first_samples(batches, settings.depth_samples))
        out["after"] = {i: t.tolist() for i, t in loads.items()}
    return out


def _calibrate(model, tokenizer, model_dir, calib, settings: ScoringSettings, block_sizes,
               items, depth_block_sizes=None, offload: str = "none",
               device: str = "cpu") -> tuple[ImportanceScores, list]:
    if tokenizer is None:
        raise MinitronError(f"{model_dir} has no tokenizer to tokenize the calibration data")
    batches = calibration_batches(calib, tokenizer, settings.calib_samples, settings.seq_len,
                                  settings.batch_size, settings.seed, settings.text_column,
                                  settings.split)
    scores = score_model(model, batches, settings, block_sizes=block_sizes, tokenizer=tokenizer,
                         task_items=items, depth_block_sizes=depth_block_sizes,
                         offload=offload, device=device)
    scores.meta.update(source=str(Path(model_dir).resolve()), calib=str(calib))
    return scores, batches


def score_checkpoint(model_dir: str | Path, out_path: str | Path,
                     settings: ScoringSettings | None = None, *, calib: str | Path,
                     block_sizes: Sequence[int] = (1,), device: str = "auto",
                     dtype: str = "auto", **overrides) -> Path:
    """Compute and save the importance artifact of a checkpoint (``minitron score``);
    ``settings`` and ``overrides`` (ScoringSettings' fields by name) as in :func:`prune`."""
    settings = ScoringSettings.make(settings, **overrides)
    device = resolve_device(device)
    model_dir = resolve_model(model_dir)
    refuse_quantized("score", model=model_dir)
    dtype = resolve_precision(device, dtype)
    config = load_config(model_dir)
    check_not_inside(out_path, model_dir)
    if calib is None or not Path(calib).exists():
        raise MinitronError(f"calibration data {calib} does not exist")
    check_texts(calib, settings.text_column, settings.split)
    offload = _resolve_offload(settings.offload, device, count_params(config), dtype)
    if offload == "layer":
        check_streamable(settings, depth_scored=True)
    items = load_task(settings.task or "winogrande", settings.task_limit) \
        if settings.depth_metric == "accuracy" else None
    model, tokenizer = load_model(model_dir, dtype=dtype,
                                  device="cpu" if offload == "layer" else device)
    scores, _ = _calibrate(model, tokenizer, model_dir, calib, settings, block_sizes, items,
                           offload=offload, device=device)
    return scores.save(out_path)


def _resolve_offload(offload: str, device: str, params: int, dtype: str) -> str:
    """The offload mode for a model of ``params`` weights in ``dtype``, before loading it."""
    if dtype not in DTYPES:
        raise MinitronError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    return resolve_offload(offload, device, params * DTYPES[dtype].itemsize)
