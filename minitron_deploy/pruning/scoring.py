"""Compute the full importance artifact for a model from calibration batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from tqdm.auto import tqdm

from ..arch import MoEAdapter, get_adapter
from ..core.errors import MinitronError
from ..core.shape import ModelShape
from ..eval.multiple_choice import MCItem, accuracy
from ..importance.criteria import (
    CriterionInputs,
    check_settings,
    criterion_meta,
    criterion_scores,
)
from ..importance.depth import (
    BlockImportanceCollector,
    accuracy_scores,
    first_samples,
    loss_scores,
)
from ..importance.experts import ExpertCollector
from ..importance.layerwise import (
    LayerStreamer,
    check_streamable,
    module_bytes,
    resolve_offload,
)
from ..importance.scores import ImportanceScores, weights_fingerprint
from ..importance.settings import ScoringSettings
from ..importance.width import WidthCollector

__all__ = ["ScoringSettings", "forward_loop_over", "score_activations", "score_forward_loop",
           "score_model"]


def forward_loop_over(batches: Sequence[torch.Tensor], desc: str = "calibration"
                      ) -> Callable[[nn.Module], None]:
    """A ModelOpt-style ``forward_loop(model)`` running every batch once, with a progress bar."""
    def loop(model: nn.Module) -> None:
        device = next(model.parameters()).device
        for ids in tqdm(batches, desc=desc, unit="batch"):
            model(input_ids=ids.to(device), use_cache=False)
    return loop


@contextmanager
def recording_inputs(model: nn.Module, batches: list[torch.Tensor]):
    """Append the ``input_ids`` of every forward call of ``model`` to ``batches``."""
    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(ids, torch.Tensor):
            batches.append(ids.detach())
    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield batches
    finally:
        handle.remove()


def score_activations(model: nn.Module, forward_loop: Callable[[nn.Module], None],
                      settings: ScoringSettings = ScoringSettings(),
                      block_sizes: Sequence[int] = (1,)) -> ImportanceScores:
    """Width scores of ``settings.criterion`` and Block Importance from one hooked run of
    ``forward_loop``: the pass yields the activation scores, BI and the token batches, from
    which the other criteria then compute their own scores."""
    return _hooked_scores(model, lambda blocks: forward_loop(model), settings, block_sizes)[0]


def score_forward_loop(model: nn.Module, forward_loop: Callable[[nn.Module], None],
                       settings: ScoringSettings, block_sizes: Sequence[int],
                       depth_block_sizes: Sequence[int]) -> ImportanceScores:
    """:func:`score_activations`, then ``settings.depth_metric``'s scores for
    ``depth_block_sizes`` on the token batches the loop ran (the ModelOpt mode's scoring)."""
    scores, batches = _hooked_scores(model, lambda blocks: forward_loop(model), settings,
                                     block_sizes)
    _depth_scores(scores, model, batches, settings, depth_block_sizes)
    return scores


def _hooked_scores(model: nn.Module, run: Callable[[BlockImportanceCollector], None],
                   settings: ScoringSettings, block_sizes: Sequence[int]
                   ) -> tuple[ImportanceScores, list[torch.Tensor]]:
    """:func:`score_activations` with the data passed by ``run(blocks)``, which gets the Block
    Importance collector (a layer-by-layer pass keeps its per-batch state apart); also the
    token batches the pass ran."""
    check_settings(settings)
    weights = weights_fingerprint(model)
    width = WidthCollector(model, settings.seq_agg, settings.batch_agg)
    blocks = BlockImportanceCollector(model, block_sizes)
    adapter = get_adapter(model.config)
    experts = ExpertCollector(model) if isinstance(adapter, MoEAdapter) else None
    batches: list[torch.Tensor] = []
    with width.attached(), blocks.attached(), recording_inputs(model, batches), torch.no_grad(), \
            experts.attached() if experts else nullcontext():
        run(blocks)
    activation = width.scores() | (experts.activation_scores() if experts else {})
    tensors = criterion_scores(CriterionInputs(model, batches, activation, settings))
    tensors.update({f"depth.bi.block{k}": s for k, s in blocks.scores().items()})
    meta = {"model_type": model.config.model_type,
            "shape": ModelShape.from_config(model.config).as_dict(), "weights": weights,
            **criterion_meta(settings), "seq_agg": settings.seq_agg,
            "batch_agg": settings.batch_agg}
    if experts:
        tensors.update(experts.expert_scores(settings.expert_criterion, settings.seed))
        meta.update(experts=adapter.expert_shape(model.config).as_dict(),
                    expert_criterion=settings.expert_criterion)
    return ImportanceScores(tensors, meta), batches


def _depth_scores(scores: ImportanceScores, model: nn.Module, batches: Sequence[torch.Tensor],
                  settings: ScoringSettings, sizes: Sequence[int],
                  streamer: LayerStreamer | None = None, tokenizer=None,
                  task_items: list[MCItem] | None = None) -> None:
    """Add ``settings.depth_metric``'s block scores for ``sizes`` to ``scores`` (Block
    Importance came with the hooked pass)."""
    if settings.depth_metric == "loss" and sizes:
        if not batches:
            raise MinitronError("depth_metric: 'loss' needs the token ids of the calibration "
                                "batches; the forward loop passed none as input_ids")
        depth_batches = first_samples(batches, settings.depth_samples)
        for k in sizes:
            scores.tensors[f"depth.loss.block{k}"] = (
                streamer.loss_scores(depth_batches, k) if streamer is not None
                else loss_scores(model, depth_batches, k))
        scores.meta["depth_samples"] = sum(len(b) for b in depth_batches)
    elif settings.depth_metric == "accuracy" and sizes:
        if tokenizer is None or not task_items:
            raise MinitronError("depth_metric: 'accuracy' needs a tokenizer and a task")
        for k in sizes:
            scores.tensors[f"depth.accuracy.block{k}"] = accuracy_scores(
                model, lambda m: accuracy(m, tokenizer, task_items), k)
        scores.meta["task_items"] = len(task_items)
    scores.meta["depth_metric"] = settings.depth_metric


def score_model(model: nn.Module, batches: Sequence[torch.Tensor],
                settings: ScoringSettings = ScoringSettings(), block_sizes: Sequence[int] = (1,),
                tokenizer=None, task_items: list[MCItem] | None = None,
                depth_block_sizes: Sequence[int] | None = None, offload: str = "none",
                device: str | torch.device | None = None) -> ImportanceScores:
    """The full artifact: one hooked pass for width (``settings.criterion``) + BI
    (``block_sizes``), then the chosen depth metric for ``depth_block_sizes`` (default: the
    same sizes; each costs a forward pass per block start, so pass ``()`` when no depth choice
    is needed).

    ``offload="layer"`` keeps the weights where they are (the CPU) and runs one decoder layer
    at a time on ``device`` (default: where the model is), with the same scores; ``"auto"``
    does so when the model does not fit the device (see
    :func:`~minitron_deploy.importance.layerwise.resolve_offload`). Without offload the model
    runs where it is, moved to ``device`` if one is given."""
    if not batches:
        raise MinitronError("the calibration set is empty")
    target = torch.device(device) if device is not None else next(model.parameters()).device
    offload = resolve_offload(offload, target, module_bytes(model))
    n_layers = ModelShape.from_config(model.config).num_layers
    sizes = [k for k in (depth_block_sizes if depth_block_sizes is not None else block_sizes)
             if 1 <= k < n_layers]
    streamer = None
    if offload == "layer":
        check_streamable(settings, depth_scored=bool(sizes))
        streamer = LayerStreamer(model, target)
        scores, _ = _hooked_scores(model, lambda blocks: streamer.activation_pass(batches, blocks),
                                   settings, block_sizes)
    else:
        if device is not None:
            model.to(target)
        scores = score_activations(model, forward_loop_over(batches), settings, block_sizes)
    _depth_scores(scores, model, batches, settings, sizes, streamer, tokenizer, task_items)
    scores.meta.update(calib_samples=sum(len(b) for b in batches),
                       seq_len=int(batches[0].shape[1]), offload=offload)
    return scores
