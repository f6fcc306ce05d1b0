"""The generic side of the TensorRT-LLM mapping: each family's layout lives in its adapter file
(``arch/<family>.py``, a ``arch.trtllm.TrtllmLayout``); this module finds it, refuses families
without one, and converts rope settings the way TensorRT-LLM reads them."""

from __future__ import annotations

from ..arch import get_adapter
from ..arch.trtllm import TrtllmLayout
from ..core.errors import MinitronError


def rotary_scaling(params: dict) -> dict | None:
    """TensorRT-LLM's ``rotary_scaling`` for the rope types our reference runner implements."""
    kind = params["rope_type"]
    if kind == "default":
        return None
    if kind == "linear":
        return {"type": "linear", "factor": float(params["factor"])}
    if kind == "llama3":
        return {"type": "llama3", "rope_type": "llama3", "factor": float(params["factor"]),
                "low_freq_factor": float(params["low_freq_factor"]),
                "high_freq_factor": float(params["high_freq_factor"]),
                "original_max_position_embeddings":
                    int(params["original_max_position_embeddings"])}
    raise MinitronError(f"rope_type {kind!r} is not supported by the TensorRT-LLM converter "
                        "(supported: default, linear, llama3)")


def get_family(config) -> TrtllmLayout:
    """The TensorRT-LLM layout of a transformers config's family (refused in one line when the
    family has none)."""
    adapter = get_adapter(config)  # refuses unsupported families with what each one supports
    if adapter.trtllm is None:
        raise MinitronError(f"TensorRT-LLM export does not support {config.model_type}: "
                            f"{adapter.trtllm_refusal}; use --format hf or onnx")
    return adapter.trtllm(adapter)
