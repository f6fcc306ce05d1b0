"""Per-rank peak memory of distillation for each distributed strategy, and the strategy a run
should use (``choose_strategy``).

Distillation, per rank (``distill_memory``; every term in bytes, the total is their sum):

- params, grads, optimizer: the fp32 student (and any learned hidden-state projections), its
  fp32 gradients and AdamW's two fp32 moments: 4 + 4 + 8 bytes per parameter, divided by the
  world size under FSDP.
- compute: single/DDP with bf16 autocast keep a bf16 copy of every linear weight for the step
  (autocast's weight cache). FSDP all-gathers two decoder layers at a time (the current one
  and the prefetched one) plus the root group (embeddings, final norm, LM head, unsharded from
  forward to the end of backward), in the compute dtype; backward adds the root's unsharded
  gradients, one layer's unsharded gradients and its fp32 reduce-scatter buffer.
- teacher: the frozen teacher (bf16 on GPU, fp32 on CPU), whole on every rank, or its shard
  when sharded for forward only (what its forward gathers is freed again before the student's
  activations build up).
- activations: what autograd saves per decoder layer (the two norms' fp32 input and normalized
  states and their output or its bf16 casts, q/k/v after RoPE and the attention output, the
  attention's log-sum-exp, four MLP intermediates; attention itself is memory-efficient SDPA,
  no S x S scores), plus the final norm and the teacher's hidden states for a hidden-state
  loss. With activation checkpointing only each layer's input is kept, plus one layer's full
  activations while it is recomputed in backward. The residual stream is fp32 when the
  parameters are (single/DDP, also under autocast) and bf16 under FSDP's bf16 policy.
- logits: the student's and the teacher's [B, S, V] logits and the loss's gradient buffer,
  all in the compute dtype; kl_chunks: the chunked KL's four fp32 ``chunk_tokens x V`` buffers.
- buckets: DDP's gradient buckets, one more fp32 copy of the gradients.
- runtime: on GPU, the CUDA context, NCCL and cuBLAS workspaces and allocator slack (2 GiB
  plus 5% of the rest, an allowance rather than a measurement); nothing on CPU.

Gradients and activations are counted together although with ``grad_accum`` 1 they only
partly coexist (gradients appear as backward frees activations), and the optimizer step's
temporaries fit in the activations and logits freed before it: the total is an upper bound
for a step. Teacher correction (an LM fine-tune of the teacher first) is not planned.
Measured against CPU runs in ``benchmarks/distill/README.md``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields, replace

import torch

from ..core.errors import MinitronError
from ..core.precision import resolve_precision
from ..core.shape import ModelShape
from .config import DistillConfig

GIB = 1024**3
RUNTIME_BYTES = 2 * GIB  # GPU: CUDA context, NCCL and cuBLAS workspaces
RUNTIME_SLACK = 0.05  # GPU: caching-allocator slack, as a fraction of the tensors
MAX_SUGGESTED_WORLD = 1024


@dataclass(frozen=True)
class ModelSizes:
    """What the memory model needs of a decoder: parameter counts and widths."""

    params: int
    layer_params: int  # the largest decoder layer
    root_params: int  # embeddings, final norm, LM head (FSDP's root group)
    linear_params: int  # weights autocast copies to bf16 (everything but the input embeddings)
    layers: int
    hidden: int
    ffn: int
    q_width: int
    kv_width: int
    heads: int
    vocab: int

    @classmethod
    def from_config(cls, config) -> ModelSizes:
        """Exact counts from a model built on the meta device (no memory, no weights)."""
        from transformers import AutoModelForCausalLM

        from ..arch import get_adapter

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        adapter = get_adapter(config)
        total = sum(p.numel() for p in model.parameters())
        per_layer = [sum(p.numel() for p in layer.parameters()) for layer in adapter.layers(model)]
        embed = adapter.embed_tokens(model).weight
        tied = adapter.lm_head(model).weight is embed
        shape = ModelShape.from_config(config)
        return cls(params=total, layer_params=max(per_layer), root_params=total - sum(per_layer),
                   linear_params=total - (0 if tied else embed.numel()), layers=shape.num_layers,
                   hidden=shape.hidden_size, ffn=shape.ffn_hidden_size,
                   q_width=shape.num_heads * shape.head_dim,
                   kv_width=shape.num_kv_heads * shape.head_dim, heads=shape.num_heads,
                   vocab=config.vocab_size)


@dataclass(frozen=True)
class MemoryBreakdown:
    """Peak memory of one distillation rank, in bytes, by what holds it."""

    params: int = 0
    grads: int = 0
    optimizer: int = 0
    compute: int = 0
    teacher: int = 0
    activations: int = 0
    logits: int = 0
    kl_chunks: int = 0
    buckets: int = 0
    runtime: int = 0

    @property
    def total(self) -> int:
        return sum(self.as_dict().values())

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Choice:
    """A way to run distillation: strategy, teacher placement, checkpointing, and its memory."""

    strategy: str
    teacher_sharded: bool
    activation_checkpointing: bool
    breakdown: MemoryBreakdown

    @property
    def label(self) -> str:
        parts = [self.strategy]
        if self.strategy == "fsdp":
            parts.append("teacher sharded" if self.teacher_sharded else "teacher replicated")
        if self.activation_checkpointing:
            parts.append("activation checkpointing")
        return ", ".join(parts)


def _bf16(cfg: DistillConfig, gpu: bool) -> bool:
    """Whether the run computes in bf16: on GPUs (planned, perhaps not present here) wherever
    ``auto``; on this CPU where the runtime's choice for ``auto`` (its probe) is bf16."""
    if gpu:
        return cfg.precision in ("auto", "bf16")
    return resolve_precision("cpu", cfg.precision) == "bf16"


def layer_activation_bytes(m: ModelSizes, tokens: int, compute: int, residual: int) -> int:
    """Bytes autograd saves in one decoder layer for ``tokens`` tokens (``compute``: bytes of
    the matmul dtype; ``residual``: bytes of the residual stream)."""
    norm = 4 * m.hidden + (4 if residual == 4 else residual) * m.hidden
    outputs = 2 * residual * m.hidden if compute == residual else 5 * compute * m.hidden
    attention = compute * (2 * m.q_width + 2 * m.kv_width) + 4 * m.heads
    return tokens * (2 * norm + outputs + attention + 4 * compute * m.ffn)


def activation_bytes(student: ModelSizes, tokens: int, compute: int, residual: int,
                     checkpointing: bool) -> int:
    """Saved activations of the whole student for ``tokens`` tokens: every layer's, or with
    checkpointing every layer's input plus one layer recomputed; plus the final norm's."""
    layer = layer_activation_bytes(student, tokens, compute, residual)
    layers = (student.layers * tokens * residual * student.hidden + layer if checkpointing
              else student.layers * layer)
    final_norm = tokens * student.hidden * (4 + (4 if residual == 4 else residual)
                                            + (residual if compute == residual else compute))
    return layers + final_norm


def _distill_memory(teacher: ModelSizes, student: ModelSizes, cfg: DistillConfig, world: int,
                    strategy: str, gpu: bool, teacher_sharded: bool,
                    checkpointing: bool) -> MemoryBreakdown:
    fsdp = strategy == "fsdp"
    shards = world if fsdp else 1
    compute = 2 if _bf16(cfg, gpu) else 4
    teacher_bytes = 2 if gpu and compute == 2 else 4
    trained = student.params + _projection_params(teacher, student, cfg)
    tokens = cfg.batch_size * cfg.seq_len
    if fsdp:
        copies = (compute * (2 * student.layer_params + 2 * student.root_params)
                  + (compute + 4) * student.layer_params)
    else:
        copies = 2 * student.linear_params if compute == 2 else 0
    residual = compute if fsdp else 4
    activations = activation_bytes(student, tokens, compute, residual, checkpointing)
    teacher_held = 0
    if cfg.uses_teacher:
        teacher_held = teacher_bytes * (teacher.params // world if teacher_sharded
                                        else teacher.params)
        if cfg.intermediate_loss is not None:
            activations += (teacher.layers + 1) * tokens * teacher.hidden * teacher_bytes
    parts = MemoryBreakdown(
        params=4 * trained // shards, grads=4 * trained // shards,
        optimizer=8 * trained // shards, compute=copies, teacher=teacher_held,
        activations=activations,
        logits=(3 if cfg.uses_teacher else 2) * tokens * student.vocab * compute,
        kl_chunks=4 * min(cfg.chunk_tokens, tokens) * student.vocab * 4,
        buckets=4 * trained if strategy == "ddp" else 0)
    if gpu:
        parts = replace(parts, runtime=RUNTIME_BYTES + int(RUNTIME_SLACK * parts.total))
    return parts


def _projection_params(teacher: ModelSizes, student: ModelSizes, cfg: DistillConfig) -> int:
    """Learned student-to-teacher maps of a hidden-state loss (trained with the student)."""
    if cfg.intermediate_loss is None or teacher.hidden == student.hidden:
        return 0
    return min(cfg.intermediate_layers, student.layers) * student.hidden * teacher.hidden


def distill_memory(teacher_cfg, student_cfg, cfg: DistillConfig, world: int, strategy: str,
                   gpu: bool, teacher_sharded: bool = False,
                   activation_checkpointing: bool = False) -> MemoryBreakdown:
    """Estimated peak memory of one rank distilling ``student_cfg`` from ``teacher_cfg``
    (transformers configs) with ``strategy`` ("single", "ddp", "fsdp") over ``world`` ranks."""
    if strategy not in ("single", "ddp", "fsdp"):
        raise MinitronError(f"unknown strategy {strategy!r}; choose from single, ddp, fsdp")
    return _distill_memory(ModelSizes.from_config(teacher_cfg),
                           ModelSizes.from_config(student_cfg), cfg, world, strategy, gpu,
                           teacher_sharded, activation_checkpointing)


def candidates(cfg: DistillConfig, world: int) -> Iterator[tuple[str, bool, bool]]:
    """(strategy, teacher sharded, activation checkpointing) that ``cfg`` allows on ``world``
    ranks, cheapest in communication and compute first: DDP, FSDP with a replicated teacher,
    FSDP with a sharded teacher; all of them again with activation checkpointing."""
    if cfg.strategy == "auto":
        strategies = ["single"] if world == 1 else ["ddp", "fsdp"]
    elif cfg.strategy == "single" and world > 1:
        raise MinitronError(f"strategy single runs in one process, not on {world} ranks")
    else:
        strategies = [cfg.strategy]
    placements = {"auto": (False, True), "shard": (True,), "replicate": (False,)}
    for checkpointing in ((True,) if cfg.activation_checkpointing else (False, True)):
        for strategy in strategies:
            sharding = cfg.teacher_sharding if cfg.uses_teacher else "replicate"
            if strategy != "fsdp" and sharding == "auto":
                sharding = "replicate"
            for sharded in placements[sharding]:
                yield strategy, sharded, checkpointing


def options(teacher: ModelSizes, student: ModelSizes, cfg: DistillConfig, world: int,
            gpu: bool) -> list[Choice]:
    """Every allowed way to run, in order of preference, with its memory."""
    return [Choice(s, sharded, ckpt, _distill_memory(teacher, student, cfg, world, s, gpu,
                                                     sharded, ckpt))
            for s, sharded, ckpt in candidates(cfg, world)]


def _first_fit(teacher: ModelSizes, student: ModelSizes, cfg: DistillConfig, world: int,
               device_bytes: int, gpu: bool) -> Choice | None:
    return next((c for c in options(teacher, student, cfg, world, gpu)
                 if c.breakdown.total <= device_bytes), None)


def pick(teacher: ModelSizes, student: ModelSizes, cfg: DistillConfig, world: int,
         device_bytes: int, gpu: bool) -> Choice:
    """The first option that fits ``device_bytes`` per rank, or a one-line refusal that says
    what would fit."""
    chosen = _first_fit(teacher, student, cfg, world, device_bytes, gpu)
    if chosen is not None:
        return chosen
    best = min(options(teacher, student, cfg, world, gpu), key=lambda c: c.breakdown.total)
    ideas = _what_fits(teacher, student, cfg, world, device_bytes, gpu)
    raise MinitronError(
        f"distill needs about {best.breakdown.total / GIB:.1f} GiB per rank at the least "
        f"({best.label}, {world} rank{'s' if world > 1 else ''}) but a device has "
        f"{device_bytes / GIB:.1f} GiB; " + (" or ".join(ideas) if ideas else
                                             "no device count or micro-batch fits"))


def _what_fits(teacher: ModelSizes, student: ModelSizes, cfg: DistillConfig, world: int,
               device_bytes: int, gpu: bool) -> list[str]:
    """Suggestions: the fewest devices of this size, the largest micro-batch or sequence."""
    ideas = []
    more = cfg if cfg.strategy != "single" else replace(cfg, strategy="auto")
    for n in range(world + 1, MAX_SUGGESTED_WORLD + 1):
        found = _first_fit(teacher, student, more, n, device_bytes, gpu)
        if found:
            ideas.append(f"it would fit on {n} {'GPUs' if gpu else 'ranks'} of "
                         f"{device_bytes / GIB:.1f} GiB ({found.label})")
            break
    for batch in range(cfg.batch_size - 1, 0, -1):
        if _first_fit(teacher, student, replace(cfg, batch_size=batch), world, device_bytes,
                      gpu):
            ideas.append(f"with micro-batch {batch} x {cfg.seq_len} (raise grad_accum to keep "
                         "the batch)")
            return ideas
    seq = cfg.seq_len // 2
    while seq >= 64:
        if _first_fit(teacher, student, replace(cfg, batch_size=1, seq_len=seq), world,
                      device_bytes, gpu):
            ideas.append(f"with micro-batch 1 x {seq} tokens")
            break
        seq //= 2
    return ideas


def choose_strategy(teacher_cfg, student_cfg, cfg: DistillConfig, world: int,
                    device_bytes: int, gpu: bool) -> Choice:
    """How to distill on ``world`` ranks of ``device_bytes`` each: single when one rank, else
    DDP if it fits, else FSDP with a replicated teacher, else with a sharded teacher, else the
    same with activation checkpointing, as far as ``cfg`` (strategy, teacher_sharding,
    activation_checkpointing) allows. Raises a one-line MinitronError saying what would fit
    (more devices, a smaller micro-batch or sequence) when nothing does."""
    return pick(ModelSizes.from_config(teacher_cfg), ModelSizes.from_config(student_cfg), cfg,
                world, device_bytes, gpu)
