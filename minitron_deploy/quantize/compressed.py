"""Compressed-tensors checkpoints: the quantized format vLLM, SGLang and transformers load.

Every ``nn.Linear`` but ``lm_head`` is quantized (embeddings are not linears, so they stay too):

- ``int8-w8a8``: INT8 weights per output channel, INT8 activations per token at run time;
- ``fp8``: FP8 E4M3 weights per output channel, activations per token at run time (FP8_DYNAMIC);
- ``fp8-block``: FP8 E4M3 weights per 128x128 block, activations per group of 128 at run time
  (FP8_BLOCK);
- ``w4a16``: INT4 weights in groups of 128 by GPTQ on the calibration batches, 16-bit
  activations (W4A16, packed eight to an int32).

All scales are symmetric, as compressed-tensors computes them (``calculate_qparams``).

Library: compressed-tensors itself (its preset schemes, ``apply_quantization_config`` and
``ModelCompressor``), not llm-compressor's ``oneshot``: llm-compressor 0.14.0.1 pins
transformers<=5.17 and compressed-tensors==0.19.0, so pip cannot install it beside this
project's transformers 5.x line. The first three schemes need no calibration (weight scales are
the weights' own min-max, activation scales are computed at run time), so compressed-tensors
alone writes exactly what llm-compressor's QuantizationModifier would. GPTQ exists only in
llm-compressor, which still runs here when installed without its pins (``pip install --no-deps
llmcompressor``): ``w4a16`` uses it when it imports and is refused otherwise; round-to-nearest
is never substituted.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch
from compressed_tensors.compressors import ModelCompressor
from compressed_tensors.offload import as_single_threaded
from compressed_tensors.quantization import (
    QuantizationConfig,
    QuantizationStatus,
    apply_quantization_config,
    preset_name_to_scheme,
)
from compressed_tensors.quantization.utils import calculate_qparams

from ..core.errors import MinitronError
from .schemes import get_scheme

#: scheme -> compressed-tensors preset.
PRESETS = {"int8-w8a8": "W8A8", "fp8": "FP8_DYNAMIC", "fp8-block": "FP8_BLOCK", "w4a16": "W4A16"}
IGNORE = ["lm_head"]
TARGETS = ["Linear"]


def write_compressed(model, tokenizer, out: Path, scheme: str, calib: list[torch.Tensor],
                     dtype: torch.dtype | None = None) -> None:
    """Quantize ``model`` in place by ``scheme`` and write it, with ``tokenizer``, as a
    compressed-tensors checkpoint into the existing empty directory ``out``.

    ``calib`` (token-id batches) is used by ``w4a16`` (GPTQ) only. ``dtype`` (the source
    checkpoint's, e.g. bf16 where the model was loaded in fp32 to compute fast) is what the
    unquantized tensors and the scales are written in; weight scales are rounded to it before
    the weights are quantized, so the integers match the stored scales. Afterwards ``model``
    runs as the written checkpoint does (it decompresses to fake-quantized weights on its next
    forward).
    """
    if scheme not in PRESETS:
        raise MinitronError(f"compressed-tensors has no scheme {scheme!r}; choose from "
                            f"{', '.join(PRESETS)}")
    check_shapes(model, scheme)
    if scheme == "w4a16":
        _gptq(model, tokenizer, calib)
    else:
        _quantize_weights(model, PRESETS[scheme], dtype)
    _save(model, tokenizer, Path(out), dtype)


def quantized_linears(model):
    """(name, module) of every linear the schemes quantize."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name.split(".")[-1] not in IGNORE]


def check_shapes(model, scheme: str) -> None:
    """Refuse a model with a quantized linear whose input features the scheme cannot split."""
    multiple = get_scheme(scheme).column_multiple
    if multiple == 1:
        return
    for name, module in quantized_linears(model):
        if module.in_features % multiple:
            raise MinitronError(f"scheme {scheme} needs input features divisible by {multiple}; "
                                f"{name} has {module.in_features}")


def _weight_min_max(weight: torch.Tensor, args) -> tuple[torch.Tensor, torch.Tensor]:
    """Min and max of ``weight`` over each unit of ``args.strategy`` (output channel or block),
    shaped as compressed-tensors stores the scale."""
    w = weight.detach()
    if args.strategy == "channel":
        return w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    if args.strategy == "block":
        rows, cols = args.block_structure
        pad = math.ceil(w.shape[0] / rows) * rows - w.shape[0]  # a partial last row of blocks
        blocks = torch.nn.functional.pad(w, (0, 0, 0, pad)).unflatten(0, (-1, rows))
        blocks = blocks.unflatten(-1, (-1, cols))
        return blocks.amin((1, 3)), blocks.amax((1, 3))
    raise MinitronError(f"no weight scales for quantization strategy {args.strategy}")


def weight_qparams(weight: torch.Tensor, args) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of ``weight`` by ``args`` (a scheme's weight arguments): its own
    min-max, as llm-compressor's weight observer computes them."""
    return calculate_qparams(*_weight_min_max(weight, args), args)


def _quantize_weights(model, preset: str, dtype: torch.dtype | None) -> None:
    """Attach the preset to every targeted linear and set its weight scales from the weights'
    own min-max (what llm-compressor's weight observer computes), rounded to ``dtype`` when
    given; activations are dynamic."""
    config = QuantizationConfig(config_groups={"group_0": preset_name_to_scheme(preset, TARGETS)},
                                ignore=IGNORE, quantization_status=QuantizationStatus.FROZEN)
    apply_quantization_config(model, config, show_progress=False)
    with torch.no_grad():
        for module in model.modules():
            scheme = getattr(module, "quantization_scheme", None)
            if scheme is None:
                continue
            scale, zero_point = weight_qparams(module.weight, scheme.weights)
            module.weight_scale.copy_(scale if dtype is None else scale.to(dtype))
            if hasattr(module, "weight_zero_point"):
                module.weight_zero_point.copy_(zero_point)


def _gptq(model, tokenizer, calib: list[torch.Tensor]) -> None:
    """INT4 group-128 weights by llm-compressor's GPTQ over the rows of ``calib``."""
    try:
        from llmcompressor import oneshot
        from llmcompressor.modifiers.quantization import GPTQModifier
    except ImportError:
        raise MinitronError("scheme w4a16 needs GPTQ from llm-compressor, which is not installed; "
                            "it pins transformers<=5.17, so install it without its pins: pip "
                            "install --no-deps llmcompressor") from None
    from datasets import Dataset

    rows = [row for batch in calib for row in batch.tolist()]
    if not rows:
        raise MinitronError("scheme w4a16 (GPTQ) needs calibration text; none was given")
    data = Dataset.from_dict({"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]})
    recipe = GPTQModifier(targets=TARGETS, scheme=PRESETS["w4a16"], ignore=IGNORE)
    source = model.config.name_or_path
    with tempfile.TemporaryDirectory() as config_dir:
        # oneshot re-reads the config from name_or_path, which an in-memory model may not have.
        model.config.save_pretrained(config_dir)
        model.config.name_or_path = config_dir
        try:
            oneshot(model=model, processor=tokenizer, dataset=data, recipe=recipe,
                    num_calibration_samples=len(rows), max_seq_length=max(map(len, rows)))
        finally:
            model.config.name_or_path = source


def _save(model, tokenizer, out: Path, dtype: torch.dtype | None) -> None:
    """Compress the frozen quantized model and write it (its 16/32-bit tensors in ``dtype``
    when given), its config's ``quantization_config``, generation config and tokenizer into
    ``out``."""
    compressor = ModelCompressor.from_pretrained_model(model)
    with as_single_threaded():  # this process alone, also where a process group is up
        compressor.compress_model(model, skip_compressed=True)
    if dtype is not None:
        _cast_unquantized(model, dtype)
    # The class's own save_pretrained: llm-compressor's oneshot wraps the instance's with one
    # that compresses again and writes its recipe beside the weights.
    type(model).save_pretrained(model, str(out))
    compressor.update_config(str(out))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))


def _cast_unquantized(model, dtype: torch.dtype) -> None:
    """Cast every 16/32-bit float tensor (embeddings, head, norms, biases, scales) to ``dtype``;
    the quantized payload (int8, packed int32, FP8) is left as it is."""
    floats = (torch.float32, torch.float16, torch.bfloat16)
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.dtype in floats:
            tensor.data = tensor.data.to(dtype)
    model.config.dtype = dtype
