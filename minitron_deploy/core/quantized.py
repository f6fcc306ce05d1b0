"""What quantization a checkpoint folder holds, read without loading it: ``minitron/quantize.json``
(written by ``minitron quantize``), else config.json's ``quantization_config`` (folders made by
other tools: llm-compressor, ModelOpt, AutoAWQ...) or ModelOpt's ``hf_quant_config.json``, else a
``*.gguf`` file.

Serving, benchmarking and export read it here, below the ``quantize`` package, which they do
not import (one floor)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .artifacts import artifact_path
from .files import read_json_dict

#: ``minitron quantize``'s record in the output's ``minitron/`` folder.
QUANTIZE_RECORD = "quantize.json"
COMPRESSED = "compressed-tensors"
MODELOPT = "modelopt"
GGUF = "gguf"
#: ModelOpt's ``quant_algo`` -> scheme.
_MODELOPT_ALGOS = {"FP8": "fp8", "NVFP4": "nvfp4"}


@dataclass(frozen=True)
class Quantization:
    """A folder's quantization: ``scheme`` as ``minitron quantize`` names it (None when the
    folder's config names no scheme it writes), ``format`` the checkpoint format (the config's
    ``quant_method`` for other tools' formats), ``detail`` what the config says where the
    scheme is unknown."""

    scheme: str | None
    format: str
    detail: str = ""

    @property
    def label(self) -> str:
        """``scheme (format)``, or the format and what its config says."""
        if self.scheme:
            return f"{self.scheme} ({self.format})"
        return f"{self.format} {self.detail}".strip()

    @property
    def vllm_method(self) -> str | None:
        """vLLM's ``quantization`` argument for this folder (None: no vLLM loader)."""
        if self.format == GGUF:
            return None
        if self.format == MODELOPT:
            return "modelopt_fp4" if self.scheme == "nvfp4" else "modelopt"
        return self.format


def read_quantization(model_dir: str | Path) -> Quantization | None:
    """The quantization of the checkpoint in ``model_dir``, or None for a 16/32-bit one."""
    folder = Path(model_dir)
    record = read_json_dict(artifact_path(folder, QUANTIZE_RECORD))
    if record.get("scheme") and record.get("format"):
        return Quantization(record["scheme"], record["format"])
    config = read_json_dict(folder / "config.json").get("quantization_config")
    if isinstance(config, dict) and config.get("quant_method"):
        return _from_config(config)
    modelopt = read_json_dict(folder / "hf_quant_config.json")
    if modelopt:
        return _from_config({**modelopt, "quant_method": MODELOPT})
    if folder.is_dir() and any(folder.glob("*.gguf")):
        return Quantization(None, GGUF, "file")
    return None


def _from_config(config: dict) -> Quantization:
    method = str(config["quant_method"])
    if method == COMPRESSED:
        return Quantization(_compressed_scheme(config), COMPRESSED,
                            str(config.get("format", "")))
    if method == MODELOPT:
        algo = str(config.get("quant_algo") or config.get("quantization", {}).get("quant_algo"))
        return Quantization(_MODELOPT_ALGOS.get(algo.upper()), MODELOPT, algo)
    return Quantization(None, method, f"{config['bits']}-bit" if "bits" in config else "")


def _compressed_scheme(config: dict) -> str | None:
    """The scheme of a compressed-tensors config whose groups all quantize alike, or None."""
    schemes = {_group_scheme(g) for g in (config.get("config_groups") or {}).values()
               if isinstance(g, dict)}
    return schemes.pop() if len(schemes) == 1 else None


def _group_scheme(group: dict) -> str | None:
    weights, inputs = group.get("weights") or {}, group.get("input_activations")
    kind = (weights.get("type"), weights.get("num_bits"), weights.get("strategy"))
    dynamic = bool(inputs and inputs.get("dynamic"))
    if kind == ("int", 8, "channel") and dynamic and inputs.get("type") == "int":
        return "int8-w8a8"
    if kind == ("float", 8, "channel") and dynamic and inputs.get("type") == "float":
        return "fp8"
    if kind == ("float", 8, "block") and dynamic and inputs.get("type") == "float":
        return "fp8-block"
    if kind[:2] == ("int", 4) and inputs is None and weights.get("group_size") == 128:
        return "w4a16"
    return None
