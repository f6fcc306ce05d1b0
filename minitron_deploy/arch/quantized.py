"""Quantized checkpoints as inputs (``core/quantized.py`` says what a folder holds): refused
where 16-bit weights are needed, and the two formats transformers cannot read itself loaded as
plain float models for evaluation.

- GGUF folders (one ``*.gguf``, no config.json): transformers' GGUF loader (``gguf_file=``)
  dequantizes every tensor to float.
- ModelOpt unified checkpoints (``quant_method: modelopt``, which transformers 5.x has no
  quantizer for): each FP8 weight times its ``weight_scale``, and each quantized linear's input
  rounded to FP8 with its static ``input_scale``, which is what an FP8 GEMM computes. NVFP4
  folders are refused: their activation quantization is not emulated here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.errors import MinitronError
from ..core.quantized import COMPRESSED, GGUF, MODELOPT, read_quantization

_FP8 = torch.float8_e4m3fn
_FP8_MAX = torch.finfo(_FP8).max
_SCALES = (".weight_scale", ".input_scale")
#: Formats whose weights transformers dequantizes on load to exactly what bf16 holds (MXFP4:
#: FP4 E2M1 values times power-of-two scales), so compressing them loses nothing; gpt-oss is
#: released only in MXFP4.
LOSSLESS_ON_LOAD = frozenset({"mxfp4"})


def gguf_file(path: Path) -> str | None:
    """The name of the GGUF file a folder without config.json holds (None when it has a
    config.json or no GGUF file); refuses a folder with several."""
    if (path / "config.json").is_file():
        return None
    found = sorted(p.name for p in path.glob("*.gguf") if p.is_file())
    if len(found) > 1:
        raise MinitronError(f"{path} holds several GGUF files ({', '.join(found)}); keep one "
                            "per folder")
    return found[0] if found else None


def refuse_quantized(command: str, **roles: str | Path) -> None:
    """Refuse any ``role=path`` that is already quantized: ``command`` (prune, distill,
    quantize) needs the 16-bit weights, and a quantized input would compress rounding error."""
    for role, path in roles.items():
        quant = read_quantization(path)
        if quant is not None and quant.format in LOSSLESS_ON_LOAD:
            print(f"the {role} {path} is {quant.format}: its weights load dequantized to 16 "
                  f"bits exactly, which is what {command} works on")
        elif quant is not None:
            raise MinitronError(f"the {role} {path} is already quantized ({quant.label}): "
                                f"{command} needs the 16-bit checkpoint it was made from; pass "
                                "that (quantize only after pruning and distillation)")


def is_modelopt(path: Path) -> bool:
    """Whether ``path`` is a ModelOpt unified checkpoint."""
    quant = read_quantization(path)
    return quant is not None and quant.format == MODELOPT


def load_gguf(path: Path, name: str, dtype: torch.dtype):
    """Model and tokenizer from the GGUF file ``path/name``, weights dequantized to ``dtype``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path), gguf_file=name, dtype=dtype,
                                                 trust_remote_code=False)
    print(f"{path / name}: GGUF weights dequantized to {str(dtype).removeprefix('torch.')} "
          "by transformers on load")
    return model, AutoTokenizer.from_pretrained(str(path), gguf_file=name)


def load_modelopt(path: Path, dtype: torch.dtype):
    """A plain model from a ModelOpt FP8 checkpoint (see the module docstring)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    quant = read_quantization(path)
    if quant is None or quant.scheme != "fp8":
        raise MinitronError(f"{path} is {quant.label if quant else 'not quantized'}; of "
                            "ModelOpt checkpoints only FP8 ones load here (dequantized)")
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise MinitronError(f"{path} has no .safetensors weights")
    written = {k: v for f in files for k, v in load_file(f).items()}
    state = {k: v.float() * written[f"{k}_scale"].float() if v.dtype == _FP8 else v
             for k, v in written.items() if not k.endswith(_SCALES)}
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if getattr(config, "tie_word_embeddings", False)
            and k == "lm_head.weight"}
    if unexpected or set(missing) - tied:
        raise MinitronError(f"{path} does not match its config: missing "
                            f"{sorted(set(missing) - tied)[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()
    for name, module in model.named_modules():
        if f"{name}.input_scale" in written:
            module.register_forward_pre_hook(_fp8_input(written[f"{name}.input_scale"].float()))
    print(f"{path}: ModelOpt FP8 dequantized on load (weight x weight_scale, inputs rounded to "
          "FP8 by input_scale)")
    return model


def _fp8_input(scale: torch.Tensor):
    """A pre-hook rounding a linear's input to FP8 E4M3 with the static ``scale``."""
    def hook(module, args):
        x = args[0]
        s = scale.to(x.device)
        return ((x / s).clamp(-_FP8_MAX, _FP8_MAX).to(_FP8).to(x.dtype) * s, *args[1:])
    return hook


def load_problem(scheme: str, fmt: str) -> str | None:
    """Why ``load_model`` cannot load a checkpoint of ``scheme`` written as ``fmt`` here, or
    None when it can."""
    import importlib.util

    needs = {COMPRESSED: "compressed_tensors", GGUF: "gguf"}.get(fmt)
    if needs is not None and importlib.util.find_spec(needs) is None:
        return f"the {needs} package is not installed"
    if fmt == MODELOPT and scheme != "fp8":
        return f"only ModelOpt FP8 checkpoints load here, not {scheme}"
    return None
