"""Importance scores as a reusable artifact: one calibration serves many targets.

``scores.safetensors`` holds every tensor (metadata embedded as JSON); ``scores.json`` beside it
is a readable summary (source, settings, per-axis statistics, least important units).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..artifacts import SCORES, artifact_path
from ..errors import MinitronError
from ..shape import ModelShape


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
