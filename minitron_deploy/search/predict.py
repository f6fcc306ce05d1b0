"""Predicted parameters, serving memory and speedup of a student in a precision, from its
config alone.

Memory is the weights, as the precision stores them (``quantize/schemes.py``: ``bf16`` or a
quantization scheme in its default format), plus the 16-bit KV cache of ``batch`` sequences of
``isl + osl`` tokens. Speedup is the 16-bit source's least generation time over the student's
at the same batch, from the roofline model of ``bench/limits.py`` with the recorded ceilings of
a named GPU: decode streams the weights' bytes in the precision (memory-bound decode scales
with them), while compute stays at the bf16 matmul rate (no credit for FP8/INT8 tensor cores,
no cost for dequantizing). A model, not a measurement.

A mixture of experts keeps every expert in memory, but a token computes with its top-k alone
(the active parameters, :func:`~minitron_deploy.core.shape.active_params`), and a decode step
of ``batch`` tokens reads the experts some token routes to: under uniform routing, a fraction
``1 - (1 - k / E) ** batch`` of the experts' bytes.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass

from ..arch import MoEAdapter, get_adapter
from ..bench.hardware import gpu_limits
from ..bench.limits import ModelCost, decode_step_flops, prefill_flops
from ..core.errors import MinitronError
from ..core.shape import ModelShape, active_params
from ..core.weight_bytes import weight_tensors
from ..quantize.schemes import UNQUANTIZED, get_scheme, storage_of
from .space import Student

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
    active_params: int = 0  # parameters one token uses (all of a dense model's)
    expert_bytes: int = 0  # of weight_bytes, the routed experts' (0: dense)


class Predictor:
    """Predictions for students (or bare shapes of a dense model) of one source config
    (tensor inventories cached per width)."""

    def __init__(self, config, deployment: Deployment) -> None:
        self.config = config
        self.deployment = deployment
        adapter = get_adapter(config)
        self.source = Student(ModelShape.from_config(config),
                              adapter.expert_shape(config)
                              if isinstance(adapter, MoEAdapter) else None)
        self._terms: dict[Student, tuple[Counter, Counter]] = {}
        self._costs: dict[Student, ModelCost] = {}
        self._uniform = not isinstance(adapter, MoEAdapter) or len(
            adapter.sparse_layers(config)) == config.num_hidden_layers
        self._source_s = self._run_s(self.source, UNQUANTIZED)

    def _student(self, shape: ModelShape | Student) -> Student:
        """A bare shape keeps the source's experts."""
        return shape if isinstance(shape, Student) else Student(shape, self.source.experts)

    def _experts_config(self, s: Student):
        """The source config with ``s``'s experts (its shape is applied by the caller)."""
        return self.config if s.experts is None else get_adapter(
            self.config).with_expert_shape(self.config, s.experts)

    def tensors(self, student: ModelShape | Student) -> Counter:
        """The tensors of ``student`` (see :func:`weight_tensors`): counted on the meta device
        at one and two layers (once per width) and extended linearly where every layer has the
        same shape; counted whole where dense and sparse layers mix (its first layers'
        layout: depth pruning keeps the dense layers the scores pick)."""
        s = self._student(student)
        if not self._uniform:
            if s not in self._terms:
                self._terms[s] = (weight_tensors(self._experts_config(s), s.shape), Counter())
            return self._terms[s][0]
        width = dataclasses.replace(s, shape=dataclasses.replace(s.shape, num_layers=1))
        if width not in self._terms:
            config = self._experts_config(s)
            one, two = (weight_tensors(config, dataclasses.replace(s.shape, num_layers=n))
                        for n in (1, 2))
            self._terms[width] = (one - (two - one), two - one)
        base, per_layer = self._terms[width]
        return base + Counter({k: n * s.shape.num_layers for k, n in per_layer.items()})

    def params(self, student: ModelShape | Student) -> int:
        """Exact parameter count (tied embeddings once)."""
        return sum(n * math.prod(dims) for (role, dims), n in self.tensors(student).items()
                   if role != "rope_freqs")

    def active_params(self, student: ModelShape | Student) -> int:
        """Parameters one token uses (:func:`~minitron_deploy.core.shape.active_params`)."""
        s = self._student(student)
        if s.experts is None:
            return self.params(s)
        experts = sum(n * math.prod(dims) for (role, dims), n in self.tensors(s).items()
                      if role == "expert")
        return active_params(self.params(s), experts, s.experts.num_experts, s.experts.top_k)

    def writable(self, student: ModelShape | Student, scheme: str) -> bool:
        """Whether ``scheme`` can quantize every linear of ``student`` (its blocks or groups
        divide the input features)."""
        if scheme == UNQUANTIZED:
            return True
        multiple = get_scheme(scheme).column_multiple
        return all(dims[-1] % multiple == 0 for role, dims in self.tensors(student)
                   if role == "linear")

    def weight_bytes(self, student: ModelShape | Student, scheme: str = UNQUANTIZED) -> int:
        return storage_of(scheme).total(self.tensors(student))

    def expert_bytes(self, student: ModelShape | Student, scheme: str = UNQUANTIZED) -> int:
        """Bytes of the routed experts' tensors."""
        return storage_of(scheme).total(Counter({k: n for k, n in self.tensors(student).items()
                                                 if k[0] == "expert"}))

    def decode_weight_bytes(self, student: Student, scheme: str = UNQUANTIZED) -> float:
        """Weight bytes read every decode step: all but an untied input embedding, the experts
        at the share some token of the batch routes to (see the module's docstring)."""
        storage = storage_of(scheme)
        dense = storage.total(Counter({k: n for k, n in self.tensors(student).items()
                                       if k[0] not in ("embedding", "expert")}))
        if student.experts is None:
            return dense
        ex = student.experts
        touched = 1 - (1 - min(ex.top_k, ex.num_experts) / ex.num_experts) ** self.deployment.batch
        return dense + touched * self.expert_bytes(student, scheme)

    def _cost(self, student: Student) -> ModelCost:
        """The roofline's size terms of ``student`` (computed once per student)."""
        if student not in self._costs:
            self._costs[student] = ModelCost.of(student.config(self.config),
                                                params=self.active_params(student))
        return self._costs[student]

    def _run_s(self, student: Student, scheme: str) -> float:
        """``Limits.run_s`` with the decode step's weight bytes in ``scheme`` (compute on the
        active parameters)."""
        d, cost = self.deployment, self._cost(student)
        limits = gpu_limits(d.gpu)
        context = d.isl + d.osl / 2
        step_bytes = (self.decode_weight_bytes(student, scheme)
                      + d.dtype_bytes * d.batch * cost.kv_per_token * context)
        step_s = max(step_bytes / limits.bandwidth,
                     decode_step_flops(cost, d.batch, context) / limits.peak_flops)
        return prefill_flops(cost, d.batch, d.isl) / limits.peak_flops + (d.osl - 1) * step_s

    def memory_gib(self, student: ModelShape | Student, scheme: str = UNQUANTIZED) -> float:
        d, s = self.deployment, self._student(student)
        kv = d.batch * (d.isl + d.osl) * self._cost(s).kv_per_token * d.dtype_bytes
        return (self.weight_bytes(s, scheme) + kv) / GIB

    def predict(self, student: ModelShape | Student, scheme: str = UNQUANTIZED) -> Prediction:
        s = self._student(student)
        return Prediction(params=self.params(s), memory_gib=self.memory_gib(s, scheme),
                          speedup=self._source_s / self._run_s(s, scheme), scheme=scheme,
                          weight_bytes=self.weight_bytes(s, scheme),
                          active_params=self.active_params(s),
                          expert_bytes=self.expert_bytes(s, scheme))
