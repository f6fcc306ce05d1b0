"""Where minitron keeps its own files in a model folder: the ``minitron/`` subfolder.

Serving engines (vLLM, SGLang, TensorRT-LLM's PyTorch backend) load every top-level
``*.safetensors`` of a folder without an index and do not recurse, so the top level holds only
what loaders expect (config, weights, tokenizer, generation config, chat template).
"""

from __future__ import annotations

from pathlib import Path

ARTIFACTS_DIR = "minitron"
PRUNING_RECORD = "minitron.json"
SCORES = "importance.safetensors"
DISTILL_SUMMARY = "distill.json"
TRAIN_LOG = "train_log.jsonl"
LOSS_CURVE = "loss_curve.png"
EXPORT_MANIFEST = "export_manifest.json"


def artifact_path(model_dir: str | Path, name: str) -> Path:
    """``model_dir/minitron/name``."""
    return Path(model_dir) / ARTIFACTS_DIR / name
