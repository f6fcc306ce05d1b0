"""Quantization-aware distillation (QAD): the student trains through the fake quantizers of
the compressed-tensors checkpoint it is then written as (``minitron distill --quantize``).

Every linear that the scheme quantizes (all but ``lm_head``, as :mod:`.compressed` writes them)
computes its forward with

- weights quantized and dequantized by scales from their current values, computed as the
  writer computes them (:func:`.compressed.weight_qparams`: per output channel, or per 128x128
  block for ``fp8-block``);
- inputs quantized and dequantized by scales computed at run time (per token, or per group of
  128 for ``fp8-block``),

by compressed-tensors' own ``fake_quantize`` and ``compute_dynamic_scales_and_zp``: the code
that runs the written checkpoint when transformers loads it, so the trained student's logits are
the checkpoint's. Gradients pass every rounding unchanged (straight-through estimator).

Library: compressed-tensors, wrapped here in the straight-through estimator, because neither
library trains through these numerics as they are: compressed-tensors quantizes under
``torch.no_grad`` (no gradient reaches the layers below a quantized input), and ModelOpt's
``TensorQuantizer`` (whose fake quantization passes gradients) scales INT8 by ``127 / amax``,
where the checkpoint's scale is ``amax / 127.5`` over -128..127, so its student would not be
the one deployed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from compressed_tensors.quantization import fake_quantize, preset_name_to_scheme
from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp
from torch import nn

from ..arch.modeling import atomic_dir
from ..core.artifacts import ARTIFACTS_DIR
from ..core.errors import MinitronError
from .api import write_record
from .compressed import (
    PRESETS,
    TARGETS,
    check_shapes,
    quantized_linears,
    weight_qparams,
    write_compressed,
)
from .schemes import QAD_SCHEMES
from .settings import QuantizeSettings


class _StraightThrough(torch.autograd.Function):
    """``quantize(x)`` forward, the identity backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, quantize) -> torch.Tensor:
        return quantize(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def _weight_qdq(weight: torch.Tensor, args) -> torch.Tensor:
    return fake_quantize(weight, *weight_qparams(weight, args), args)


def _input_qdq(x: torch.Tensor, args) -> torch.Tensor:
    return fake_quantize(x, *compute_dynamic_scales_and_zp(x, args, module=None), args)


def _forward(module: nn.Linear, weights, inputs, x: torch.Tensor) -> torch.Tensor:
    x = _StraightThrough.apply(x, partial(_input_qdq, args=inputs))
    w = _StraightThrough.apply(module.weight, partial(_weight_qdq, args=weights))
    return F.linear(x, w, module.bias)


def check_qad_scheme(scheme: str) -> None:
    """Refuse, in one line, a scheme QAD cannot train through."""
    if scheme not in QAD_SCHEMES:
        raise MinitronError(f"quantization-aware distillation supports {', '.join(QAD_SCHEMES)}, "
                            f"not {scheme}; distill, then quantize with minitron quantize")


def fake_quantize_student(model: nn.Module, scheme: str) -> None:
    """Make every linear that ``scheme`` quantizes compute with its fake quantizers (in place;
    the parameters stay as they are). Refuses a linear whose shape the scheme cannot split."""
    check_qad_scheme(scheme)
    check_shapes(model, scheme)
    args = preset_name_to_scheme(PRESETS[scheme], TARGETS)
    for _, module in quantized_linears(model):
        module.forward = partial(_forward, module, args.weights, args.input_activations)


def remove_fake_quantization(model: nn.Module) -> None:
    """Undo :func:`fake_quantize_student`: the linears compute in full precision again."""
    for _, module in quantized_linears(model):
        module.__dict__.pop("forward", None)


def save_quantized_student(model: nn.Module, out: Path, *, scheme: str, tokenizer,
                           source_dir: Path, extra_json: dict[str, dict],
                           write_artifacts: Callable[[Path], object]) -> None:
    """Write the trained ``model`` (loaded from ``source_dir``) as the ``scheme`` checkpoint
    into ``out``, all or nothing: what ``minitron quantize`` of it writes (its
    ``quantize.json`` too), plus ``extra_json`` files and ``write_artifacts(folder)`` in its
    ``minitron/`` folder. ``model`` is quantized in place."""
    remove_fake_quantization(model)
    with atomic_dir(out, source_dir) as tmp:
        t0 = time.perf_counter()
        write_compressed(model, tokenizer, tmp, scheme, [])
        write_record(tmp, out, QuantizeSettings(scheme=scheme), Path(source_dir),
                     {"quantize": time.perf_counter() - t0})
        artifacts = tmp / ARTIFACTS_DIR
        for name, data in extra_json.items():
            (artifacts / name).write_text(json.dumps(data, indent=2) + "\n")
        write_artifacts(artifacts)
