"""ONNX export of a decoder's prefill (``input_ids`` -> ``logits``) and an onnxruntime check.

transformers 5's mask creation breaks the TorchScript exporter (``aten::diff``), so this uses
the dynamo exporter (``torch.onnx.export(..., dynamo=True)``, needs ``onnxscript``). Batch and
sequence length are dynamic. The graph runs without a KV cache (every call recomputes the
prefix): it serves scoring and prefill, not fast decoding. Mixture-of-experts models export
with transformers' ``batched_mm`` experts (each token's top-k experts' weights gathered, then
batched matmuls: static shapes), as the default grouped kernel is an op ONNX has no lowering
for.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from ..arch import get_adapter
from ..core.errors import MinitronError

ONNX_FILE = "model.onnx"


class _Logits(nn.Module):
    """``input_ids -> logits`` without cache outputs, the signature the graph gets."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def write_onnx(model: nn.Module, directory: Path, opset: int = 18) -> Path:
    """Export ``model`` (float32 on CPU) into ``directory/model.onnx`` and check the graph."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError:
        raise MinitronError("ONNX export needs onnx and onnxscript: "
                            "pip install 'minitron-deploy[onnx]'")
    model = model.float().cpu().eval()
    if "moe" in get_adapter(model.config).features(model.config):
        model.set_experts_implementation("batched_mm")
    max_pos = model.config.max_position_embeddings
    example = torch.zeros(2, min(8, max_pos), dtype=torch.long)  # 1 would specialize batch
    dims = {0: torch.export.Dim("batch", min=1, max=1024),
            1: torch.export.Dim("sequence", min=2, max=max_pos)}
    path = directory / ONNX_FILE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Logits(model), (example,), str(path), dynamo=True, opset_version=opset,
                          input_names=["input_ids"], output_names=["logits"],
                          dynamic_shapes={"input_ids": dims}, external_data=False,
                          verbose=False)
    onnx.checker.check_model(str(path))
    return path


def onnx_logits(path: str | Path, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits from onnxruntime (CPU) for ``input_ids`` ``[batch, seq]`` (seq >= 2)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise MinitronError("running ONNX needs onnxruntime: pip install 'minitron-deploy[onnx]'")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"input_ids": input_ids.numpy()})[0])
