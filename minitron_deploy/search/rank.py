"""Ranking candidates: held-out loss right after pruning, then after a short distillation.

Every candidate is pruned from the same teacher and the same importance scores. Each result
is cached as ``<cache>/<shape key>.json`` (written atomically, tagged with the hash of what it
depends on), so an interrupted search resumes where it stopped and redoes nothing.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from statistics import fmean, stdev

import torch
from torch import nn
from tqdm.auto import tqdm

from ..arch.modeling import load_model, save_checkpoint_atomic
from ..core.align import Alignment
from ..core.files import settings_hash, write_json_atomic
from ..distill.api import DistillConfig, distill
from ..eval.multiple_choice import evaluate_items
from ..eval.perplexity import sequence_nll
from ..importance.scores import ImportanceScores
from ..pruning.api import prune_model
from ..pruning.target import TargetSpec, resolve_target
from .candidates import Candidate


def shape_spec(candidate: Candidate, align: Alignment = Alignment()) -> TargetSpec:
    """The explicit ``minitron prune`` request for a candidate's shape (and experts)."""
    s, ex = candidate.shape, candidate.experts
    experts = {} if ex is None else {"num_experts": ex.num_experts,
                                     "moe_ffn_hidden_size": ex.ffn,
                                     "shared_expert_ffn_hidden_size": ex.shared_ffn}
    # where the experts are the MLP width (Mixtral, OLMoE), moe_ffn_hidden_size names it
    ffn = None if ex is not None and s.ffn_hidden_size == ex.ffn else s.ffn_hidden_size
    return TargetSpec(hidden_size=s.hidden_size, ffn_hidden_size=ffn,
                      num_heads=s.num_heads, num_kv_heads=s.num_kv_heads,
                      num_layers=s.num_layers, align=align, **experts)


def pruned_copy(teacher: nn.Module, scores: ImportanceScores, candidate: Candidate,
                depth_metric: str) -> nn.Module:
    """A copy of ``teacher`` pruned to the candidate, exactly as ``minitron prune`` does."""
    model = copy.deepcopy(teacher)
    prune_model(model, scores, resolve_target(model.config, shape_spec(candidate)), depth_metric)
    return model


def rank_after_pruning(teacher: nn.Module, scores: ImportanceScores,
                       candidates: list[Candidate], depth_metric: str,
                       losses_of: Callable[[nn.Module], list[float]],
                       cache: ResultCache | None = None
                       ) -> tuple[list[Candidate], dict[str, float]]:
    """Every candidate pruned from ``teacher`` with the same ``scores`` and measured by
    ``losses_of`` (per-sample losses, lower is better, ranked by their mean; results in
    ``cache`` are reused, new ones added): the candidates best first, and the mean loss per
    shape key."""
    losses = {}
    for c in tqdm(candidates, desc="loss after pruning", unit="candidate"):
        cached = cache.get(c.shape_key) if cache is not None else {}
        if cached.get("loss_pruned") is None:
            per_sample = losses_of(pruned_copy(teacher, scores, c, depth_metric))
            cached = {"loss_pruned": fmean(per_sample), "loss_pruned_seqs": per_sample}
            if cache is not None:
                cache.update(c.shape_key, **cached)
        losses[c.shape_key] = cached["loss_pruned"]
    return sorted(candidates, key=lambda c: losses[c.shape_key]), losses


def heldout_losses(model: nn.Module, sequences: torch.Tensor, batch_size: int) -> list[float]:
    """Mean next-token loss (nats) of each held-out sequence."""
    nll, count = sequence_nll(model, sequences, batch_size)
    return (nll / count).tolist()


def paired_gap(losses: list[float], reference: list[float]) -> tuple[float, float]:
    """How much higher ``losses`` are than ``reference`` on the same held-out sequences: the
    mean per-sequence difference and its standard error (0 for a single sequence)."""
    diff = [a - b for a, b in zip(losses, reference, strict=True)]
    return fmean(diff), stdev(diff) / math.sqrt(len(diff)) if len(diff) > 1 else 0.0


class ResultCache:
    """Per-candidate results in ``folder``; an entry counts only under the same ``tag``."""

    def __init__(self, folder: Path, depends_on: dict) -> None:
        self.folder = folder
        self.tag = settings_hash(depends_on)

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def get(self, key: str) -> dict:
        path = self._path(key)
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return data if data.get("tag") == self.tag else {}

    def update(self, key: str, **values) -> dict:
        data = {**self.get(key), **values, "tag": self.tag}
        write_json_atomic(self._path(key), data)
        return data


def short_kd(teacher_dir: Path, pruned: nn.Module, data: Path, work: Path,
             config: DistillConfig) -> nn.Module:
    """``pruned`` distilled from the teacher for ``config.tokens`` (resumable in ``work``);
    the scratch files are removed afterwards."""
    student, distilled = work / "student", work / "distilled"
    if not (student / "config.json").is_file():
        shutil.rmtree(student, ignore_errors=True)
        save_checkpoint_atomic(pruned, student, source_dir=teacher_dir)
    if not (distilled / "config.json").is_file():
        shutil.rmtree(distilled, ignore_errors=True)
        distill(teacher_dir, student, data, distilled, config, resume=True)
    dtype = next(pruned.parameters()).dtype
    name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    model = load_model(distilled, dtype=name, device=str(next(pruned.parameters()).device))[0]
    shutil.rmtree(work, ignore_errors=True)
    return model


def task_metric(task: str, limit: int | None, tokenizer, batch_size: int
                ) -> Callable[[nn.Module], float]:
    """Accuracy of a model on a named multiple-choice task (acc_norm where lm-eval reports it)."""
    from ..eval.api import NORMED
    from ..eval.tasks import load_named_task

    items = load_named_task(task, limit)

    def score(model: nn.Module) -> float:
        result = evaluate_items(model, tokenizer, items, batch_size)
        return result.acc_norm if task in NORMED else result.acc
    return score
