"""Importance scores as a reusable artifact: one calibration serves many targets.

``scores.safetensors`` holds every tensor (metadata embedded as JSON); ``scores.json`` beside it
is a readable summary (source, settings, per-axis statistics, least important units). The
metadata carries a fingerprint of the weights the scores were computed on, and reuse is
refused on other weights, another shape, another criterion or other criterion settings.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..core.artifacts import SCORES, artifact_path
from ..core.errors import MinitronError
from ..core.shape import ModelShape
from .criteria import CRITERIA

if TYPE_CHECKING:
    from torch import nn

    from .settings import ScoringSettings

#: Values per tensor in the fingerprint's sample.
_SAMPLE = 16384
#: Knuth's multiplicative hash: sample positions spread over rows and columns alike.
_SPREAD = 2654435761
#: Criterion settings that are caps, recorded as what was used (not compared on reuse).
_CAPS = ("depth_samples",)


def weights_fingerprint(model: nn.Module) -> str:
    """Identity of a model's weights: sha256 over every floating-point tensor's name and
    shape and a sample of its values (all of them in tensors of up to 16,384 values, else
    16,384 positions scattered over the tensor), rounded to bf16 so fp32 and bf16 copies of one
    checkpoint agree. Only the sample leaves the device: 0.14 s for a SmolLM2-135M-shaped model
    on a 2-core CPU, where a sha256 of every byte took 0.7 s (bf16) to 1.3 s (fp32), and on a
    GPU would first copy every weight to the host."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in sorted(model.state_dict().items()):
            if not tensor.is_floating_point():
                continue
            flat = tensor.detach().reshape(-1)
            if flat.numel() > _SAMPLE:
                positions = torch.arange(_SAMPLE, dtype=torch.int64) * _SPREAD % flat.numel()
                flat = flat.index_select(0, positions.to(flat.device))
            digest.update(f"{name}{tuple(tensor.shape)}".encode())
            digest.update(flat.to(torch.bfloat16).view(torch.int16).cpu().numpy().tobytes())
    return digest.hexdigest()


@dataclass
class ImportanceScores:
    """Width scores (``mlp.i``, ``heads.i``, ``kv_heads.i``, ``hidden``) and depth scores
    (``depth.<metric>.block<k>``: one value per block start). Higher means more important."""

    tensors: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)

    def depth(self, metric: str, block_size: int) -> torch.Tensor | None:
        return self.tensors.get(f"depth.{metric}.block{block_size}")

    def has_width(self) -> bool:
        return "hidden" in self.tensors

    def check_matches(self, shape: ModelShape) -> None:
        """Refuse scores computed on a model of another shape."""
        recorded = self.meta.get("shape")
        if recorded is not None and recorded != shape.as_dict():
            raise MinitronError(f"the scores were computed on a model of shape {recorded}, "
                                f"not {shape.as_dict()}")

    def check_reuse(self, settings: ScoringSettings, shape: ModelShape,
                    depth_block: int) -> None:
        """Refuse scores that cannot serve this request: computed on another shape, by another
        criterion or with other criterion settings (aggregation, knobs), or lacking the depth
        scores for blocks of ``depth_block`` layers (0: no layers chosen by importance)."""
        self.check_matches(shape)
        held = self.meta.get("criterion", "activation")
        if held != settings.criterion:
            raise MinitronError(f"criterion: the scores hold {held!r} scores, not "
                                f"{settings.criterion!r}; set criterion {held} to use them")
        for knob in CRITERIA[held].knobs:
            if knob in self.meta and knob not in _CAPS \
                    and self.meta[knob] != getattr(settings, knob):
                raise MinitronError(f"{knob}: the scores were computed with "
                                    f"{self.meta[knob]!r}, not {getattr(settings, knob)!r}")
        held = self.meta.get("expert_criterion")
        if held is not None and held != settings.expert_criterion:
            raise MinitronError(f"expert_criterion: the scores rank experts by {held!r}, not "
                                f"{settings.expert_criterion!r}")
        if depth_block and self.depth(settings.depth_metric, depth_block) is None:
            raise MinitronError(f"depth_metric: the scores hold no {settings.depth_metric!r} "
                                f"depth scores for blocks of {depth_block} layers")

    def check_weights(self, model: nn.Module) -> None:
        """Refuse scores computed on other weights than ``model``'s."""
        recorded = self.meta.get("weights")
        if recorded is None:
            raise MinitronError("the scores record no fingerprint of the weights they were "
                                "computed on; compute them again")
        if recorded != weights_fingerprint(model):
            raise MinitronError("the scores were computed on other weights than this model's "
                                "(same shape, other values); compute them on this model")

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (.safetensors) and its .json summary atomically; returns the path."""
        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_suffix(".safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(tmp),
                  metadata={"minitron": json.dumps(self.meta)})
        summary_tmp = path.with_suffix(".json.tmp")
        summary_tmp.write_text(json.dumps(self.summary(), indent=2) + "\n")
        os.replace(tmp, path)
        os.replace(summary_tmp, path.with_suffix(".json"))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ImportanceScores":
        """Scores from a scores file or a pruned model folder (its ``minitron/`` scores)."""
        path = Path(path)
        if path.is_dir():
            path = artifact_path(path, SCORES)
        if not path.is_file():
            raise MinitronError(f"scores file {path} does not exist")
        try:
            tensors = load_file(str(path))

            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("minitron", "{}"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise MinitronError(f"cannot read scores file {path}: {exc}")
        return cls(tensors, meta)

    def summary(self) -> dict:
        axes: dict[str, dict] = {}
        for key, t in sorted(self.tensors.items()):
            axes[key] = {"n": t.numel(), "min": float(t.min()), "max": float(t.max()),
                         "mean": float(t.float().mean()),
                         "least_important": t.argsort()[:8].tolist()}
        return {"meta": self.meta, "axes": axes}
