"""Predicted parameters, serving memory and speedup of a shape in a precision, from its config
alone.

Memory is the weights, as the precision stores them (``quantize/schemes.py``: ``bf16`` or a
quantization scheme in its default format), plus the 16-bit KV cache of ``batch`` sequences of
``isl + osl`` tokens. Speedup is the 16-bit source's least generation time over the shape's at
the same batch, from the roofline model of ``bench/limits.py`` with the recorded ceilings of a
named GPU: decode streams the weights' bytes in the precision (memory-bound decode scales with
them), while compute stays at the bf16 matmul rate (no credit for FP8/INT8 tensor cores, no
cost for dequantizing). A model, not a measurement.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass

from ..bench.hardware import gpu_limits
from ..bench.limits import ModelCost, decode_step_flops, prefill_flops
from ..core.errors import MinitronError
from ..core.shape import ModelShape, reshaped_config
from ..core.weight_bytes import weight_tensors
from ..quantize.schemes import UNQUANTIZED, storage_of

GIB = 2**30


@dataclass(frozen=True)
class Deployment:
    """Where the student will serve: GPU, batch, prompt and output lengths, bytes per weight."""

    gpu: str = "h100"
    batch: int = 1
    isl: int = 512
    osl: int = 128
    dtype_bytes: int = 2

    def __post_init__(self) -> None:
        gpu_limits(self.gpu)
        if self.batch < 1 or self.isl < 1 or self.osl < 2:
            raise MinitronError("--at-batch and --isl must be >= 1 and --osl >= 2")


@dataclass(frozen=True)
class Prediction:
    params: int
    memory_gib: float
    speedup: float
    scheme: str = UNQUANTIZED
    weight_bytes: int = 0


class Predictor:
    """Predictions for shapes of one source config (tensor inventories cached per width)."""

    def __init__(self, config, deployment: Deployment) -> None:
        self.config = config
        self.deployment = deployment
        self.source = ModelShape.from_config(config)
        self._terms: dict[ModelShape, tuple[Counter, Counter]] = {}
        self._source_s = self._run_s(self.source, UNQUANTIZED)

    def tensors(self, shape: ModelShape) -> Counter:
        """The tensors of ``shape`` (see :func:`weight_tensors`): counted on the meta device at
        one and two layers (once per width) and extended linearly, as every layer has the same
        shape."""
        width = dataclasses.replace(shape, num_layers=1)
        if width not in self._terms:
            one, two = (weight_tensors(self.config, dataclasses.replace(shape, num_layers=n))
                        for n in (1, 2))
            self._terms[width] = (one - (two - one), two - one)
        base, per_layer = self._terms[width]
        return base + Counter({k: n * shape.num_layers for k, n in per_layer.items()})

    def params(self, shape: ModelShape) -> int:
        """Exact parameter count (tied embeddings once)."""
        return sum(n * math.prod(dims) for (role, dims), n in self.tensors(shape).items()
                   if role != "rope_freqs")

    def weight_bytes(self, shape: ModelShape, scheme: str = UNQUANTIZED) -> int:
        return storage_of(scheme).total(self.tensors(shape))

    def _streamed_bytes(self, shape: ModelShape, scheme: str) -> int:
        """Weight bytes read every decode step: all but an untied input embedding."""
        storage = storage_of(scheme)
        return storage.total(Counter({k: n for k, n in self.tensors(shape).items()
                                      if k[0] != "embedding"}))

    def _cost(self, shape: ModelShape) -> ModelCost:
        return ModelCost.of(reshaped_config(self.config, shape), params=self.params(shape))

    def _run_s(self, shape: ModelShape, scheme: str) -> float:
        """``Limits.run_s`` with the decode step's weight bytes in ``scheme``."""
        d, cost = self.deployment, self._cost(shape)
        limits = gpu_limits(d.gpu)
        context = d.isl + d.osl / 2
        step_bytes = (self._streamed_bytes(shape, scheme)
                      + d.dtype_bytes * d.batch * cost.kv_per_token * context)
        step_s = max(step_bytes / limits.bandwidth,
                     decode_step_flops(cost, d.batch, context) / limits.peak_flops)
        return prefill_flops(cost, d.batch, d.isl) / limits.peak_flops + (d.osl - 1) * step_s

    def memory_gib(self, shape: ModelShape, scheme: str = UNQUANTIZED) -> float:
        d = self.deployment
        kv = d.batch * (d.isl + d.osl) * self._cost(shape).kv_per_token * d.dtype_bytes
        return (self.weight_bytes(shape, scheme) + kv) / GIB

    def predict(self, shape: ModelShape, scheme: str = UNQUANTIZED) -> Prediction:
        return Prediction(params=self.params(shape), memory_gib=self.memory_gib(shape, scheme),
                          speedup=self._source_s / self._run_s(shape, scheme), scheme=scheme,
                          weight_bytes=self.weight_bytes(shape, scheme))
