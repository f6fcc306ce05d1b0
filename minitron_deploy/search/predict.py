"""Predicted parameters, serving memory and speedup of a shape, from its config alone.

Memory is the weights plus the KV cache of ``batch`` sequences of ``isl + osl`` tokens.
Speedup is the source's least generation time over the shape's at the same batch, from the
roofline model of ``bench/limits.py`` with the recorded ceilings of a named GPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..bench.hardware import gpu_limits
from ..bench.limits import ModelCost
from ..core.errors import MinitronError
from ..core.shape import ModelShape, count_params, reshaped_config

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


class Predictor:
    """Predictions for shapes of one source config (parameter counts cached)."""

    def __init__(self, config, deployment: Deployment) -> None:
        self.config = config
        self.deployment = deployment
        self.source = ModelShape.from_config(config)
        self._terms: dict[ModelShape, tuple[int, int]] = {}
        self._source_s = self._run_s(self.source)

    def params(self, shape: ModelShape) -> int:
        """Exact parameter count: counted on the meta device at one and two layers (once per
        width) and extended linearly, as every layer has the same shape."""
        width = dataclasses.replace(shape, num_layers=1)
        if width not in self._terms:
            one, two = (count_params(self.config, dataclasses.replace(shape, num_layers=n))
                        for n in (1, 2))
            self._terms[width] = (2 * one - two, two - one)
        base, per_layer = self._terms[width]
        return base + shape.num_layers * per_layer

    def _cost(self, shape: ModelShape) -> ModelCost:
        return ModelCost.of(reshaped_config(self.config, shape), params=self.params(shape))

    def _run_s(self, shape: ModelShape) -> float:
        d = self.deployment
        return gpu_limits(d.gpu).run_s(self._cost(shape), d.batch, d.isl, d.osl, d.dtype_bytes)

    def memory_gib(self, shape: ModelShape) -> float:
        d = self.deployment
        cost = self._cost(shape)
        kv = d.batch * (d.isl + d.osl) * cost.kv_per_token
        return (cost.params + kv) * d.dtype_bytes / GIB

    def predict(self, shape: ModelShape) -> Prediction:
        return Prediction(params=self.params(shape), memory_gib=self.memory_gib(shape),
                          speedup=self._source_s / self._run_s(shape))
