"""Bytes of a model's weights as a checkpoint format stores them, from its config alone.

A :class:`Storage` says how each kind of tensor is stored: the quantized linears, the input
embedding, the output projection (``lm_head``; a tied embedding is stored once, as the output
projection is), 1-D tensors (norms, biases) and other matrices. A :class:`Layout` gives the
bytes of one ``[rows, cols]`` matrix: the values, one scale per block and per-tensor extras.
The quantization schemes pick their storage in ``quantize/schemes.py``; the counts are checked
against what ``minitron quantize`` writes (``tests/test_weight_bytes.py``). They count tensor
data only: a safetensors header and a GGUF file's tokenizer and metadata come on top.
Mixture-of-experts expert tensors (``[E, ...]`` parameters of an ``experts`` module, not
``nn.Linear``) have the role ``expert`` and are stored as ``matrix``: 16-bit in every storage,
as the compressed-tensors writer (linears only) leaves them; GGUF export, which would quantize
them, refuses the MoE families.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM

from .shape import ModelShape, expert_parameters, reshaped_config

#: Roles of the tensors a checkpoint holds.
ROLES = ("linear", "embedding", "lm_head", "vector", "matrix", "expert", "rope_freqs")


@dataclass(frozen=True)
class Layout:
    """One matrix ``[rows, cols]``: ``bits`` per value (packed along a row), one scale of
    ``scale_bytes`` per ``block`` of (rows, cols) values (0: the whole dimension), ``extra``
    bytes per tensor (per-tensor scales, a shape record), and the ``fallback`` layout of a
    matrix whose rows are not whole blocks (GGUF keeps those F16)."""

    bits: int
    block: tuple[int, int] = (0, 0)
    scale_bytes: int = 0
    extra: int = 0
    fallback: Layout | None = None

    def nbytes(self, rows: int, cols: int) -> int:
        block_rows, block_cols = (b or n for b, n in zip(self.block, (rows, cols)))
        if self.fallback is not None and cols % block_cols:
            return self.fallback.nbytes(rows, cols)
        scales = math.ceil(rows / block_rows) * math.ceil(cols / block_cols) * self.scale_bytes
        return rows * math.ceil(cols * self.bits / 8) + scales + self.extra

    def bits_per_weight(self, rows: int = 4096, cols: int = 4096) -> float:
        """Bits per value, scales included, of a ``rows x cols`` matrix."""
        return 8 * self.nbytes(rows, cols) / (rows * cols)


#: A 16-bit matrix (bf16 or fp16), no scales.
SIXTEEN = Layout(16)


@dataclass(frozen=True)
class Storage:
    """How a checkpoint stores each kind of tensor (see the module's docstring)."""

    linear: Layout = SIXTEEN
    embedding: Layout = SIXTEEN
    lm_head: Layout = SIXTEEN
    matrix: Layout = SIXTEEN
    vector_bytes: int = 2
    rope_freqs: bool = False  # GGUF: llama.cpp's F32 tensor of Llama 3.1's rope factors

    def nbytes(self, role: str, dims: tuple[int, ...]) -> int:
        if role == "rope_freqs":
            return 4 * dims[0] if self.rope_freqs else 0
        if role == "vector":
            return self.vector_bytes * math.prod(dims)
        layout = self.matrix if role == "expert" else getattr(self, role)
        return layout.nbytes(math.prod(dims[:-1]), dims[-1])

    def total(self, tensors: Counter) -> int:
        """Bytes of ``tensors`` (a count of each ``(role, dims)``, see :func:`weight_tensors`)."""
        return sum(n * self.nbytes(role, dims) for (role, dims), n in tensors.items())


#: A 16-bit checkpoint: every tensor in bf16.
BF16 = Storage()


def _role(param: torch.Tensor, linear_ids: set[int], expert_ids: set[int], model) -> str:
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is not None and param is out.weight:  # a tied embedding is the output projection
        return "lm_head"
    if inp is not None and param is inp.weight:
        return "embedding"
    if id(param) in linear_ids:
        return "linear"
    if id(param) in expert_ids:
        return "expert"
    return "vector" if param.ndim <= 1 else "matrix"


def weight_tensors(config, shape: ModelShape | None = None) -> Counter:
    """How many tensors of each ``(role, dims)`` the model ``config`` describes (reshaped to
    ``shape``) holds, each shared tensor once; built on the meta device (no memory).

    Roles: ``linear`` (weights of ``nn.Linear`` modules but the output projection),
    ``embedding``, ``lm_head``, ``vector`` (1-D: norms, biases), ``expert`` (the routed
    experts' ``[E, ...]`` tensors), ``matrix`` (any other) and ``rope_freqs`` (Llama 3.1 rope
    scaling, which GGUF stores as a tensor)."""
    if shape is not None:
        config = reshaped_config(config, shape)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linear_ids = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    expert_ids = {id(p) for p in expert_parameters(model, getattr(config, "num_experts", None))}
    found = Counter((_role(p, linear_ids, expert_ids, model), tuple(p.shape))
                    for p in model.parameters())
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type") == "llama3":
        head_dim = getattr(config, "head_dim", None) or (config.hidden_size
                                                         // config.num_attention_heads)
        found[("rope_freqs", (head_dim // 2,))] += 1
    return found


def weight_bytes(config, storage: Storage | None = None, shape: ModelShape | None = None) -> int:
    """Bytes of the weights of ``config`` (reshaped to ``shape``) stored as ``storage``
    (None: 16-bit)."""
    return (storage or BF16).total(weight_tensors(config, shape))
