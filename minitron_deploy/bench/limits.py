"""Hardware limits of a generation: bytes and FLOPs a perfect engine must spend, and memory needs.

Decode reads every weight once per step (the input embedding only for the batch's rows) plus
the K/V of every cached position; a step is bound by ``max(bytes / bandwidth, flops / peak)``.
Prefill is counted in FLOPs (weights times tokens, causal attention, lm_head for the last token).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.shape import ModelShape, count_params


@dataclass(frozen=True)
class ModelCost:
    """Size terms of a decoder, in elements (multiply by the dtype's bytes)."""

    params: int  # every parameter, tied embeddings counted once
    embed_params: int  # input embedding rows not read per step (0 if tied to lm_head)
    lm_head_params: int
    kv_per_token: int  # K and V elements per position, all layers
    attn_width: int  # query heads x head_dim, all layers summed per position (for FLOPs)

    @classmethod
    def of(cls, config, params: int | None = None) -> "ModelCost":
        """The cost of ``config``; ``params`` skips counting when already known."""
        shape = ModelShape.from_config(config)
        lm_head = config.vocab_size * shape.hidden_size
        tied = bool(getattr(config, "tie_word_embeddings", False))
        return cls(params=count_params(config) if params is None else params,
                   embed_params=0 if tied else lm_head, lm_head_params=lm_head,
                   kv_per_token=2 * shape.num_layers * shape.num_kv_heads * shape.head_dim,
                   attn_width=shape.num_layers * shape.num_heads * shape.head_dim)

    @property
    def streamed_params(self) -> int:
        """Parameters read in full every decode step."""
        return self.params - self.embed_params


def decode_step_bytes(cost: ModelCost, batch: int, context: float, dtype_bytes: int) -> float:
    return dtype_bytes * (cost.streamed_params + batch * cost.kv_per_token * context)


def decode_step_flops(cost: ModelCost, batch: int, context: float) -> float:
    matmul = 2 * batch * cost.streamed_params
    attention = 4 * batch * cost.attn_width * context  # q.k and p.v
    return matmul + attention


def prefill_flops(cost: ModelCost, batch: int, isl: int) -> float:
    body = cost.streamed_params - cost.lm_head_params
    causal_attention = 2 * batch * cost.attn_width * isl * isl  # half of 4*S^2
    return 2 * batch * (isl * body + cost.lm_head_params) + causal_attention


@dataclass(frozen=True)
class Limits:
    """Measured ceilings of the machine: copy bandwidth (read + write bytes/s), matmul FLOP/s."""

    bandwidth: float
    peak_flops: float

    def decode_step_s(self, cost: ModelCost, batch: int, context: float, dtype_bytes: int):
        return max(decode_step_bytes(cost, batch, context, dtype_bytes) / self.bandwidth,
                   decode_step_flops(cost, batch, context) / self.peak_flops)

    def run_s(self, cost: ModelCost, batch: int, isl: int, osl: int, dtype_bytes: int) -> float:
        """Least time for the whole generation (prefill + ``osl - 1`` decode steps)."""
        mean_context = isl + osl / 2
        return (prefill_flops(cost, batch, isl) / self.peak_flops
                + (osl - 1) * self.decode_step_s(cost, batch, mean_context, dtype_bytes))

    def report(self, cost: ModelCost, batch: int, isl: int, osl: int, dtype_bytes: int,
               itl_s: float | None, ttft_s: float, e2e_s: float) -> dict:
        """Fractions of the limits reached, and which resource binds decode."""
        context = isl + osl / 2
        step_bytes = decode_step_bytes(cost, batch, context, dtype_bytes)
        step_flops = decode_step_flops(cost, batch, context)
        memory_bound = step_bytes / self.bandwidth >= step_flops / self.peak_flops
        return {
            "decode_bytes_per_step": step_bytes, "decode_flops_per_step": step_flops,
            "decode_bound": "memory" if memory_bound else "compute",
            "decode_limit_tok_s": batch / self.decode_step_s(cost, batch, context, dtype_bytes),
            "decode_fraction": (None if not itl_s else
                                self.decode_step_s(cost, batch, context, dtype_bytes) / itl_s),
            "prefill_fraction": prefill_flops(cost, batch, isl) / self.peak_flops / ttft_s,
            "run_fraction": self.run_s(cost, batch, isl, osl, dtype_bytes) / e2e_s,
        }


def memory_needed(cost: ModelCost, config, batch: int, max_len: int, dtype_bytes: int,
                  fused_copies: bool) -> dict[str, float]:
    """Bytes a run allocates: weights (+ the fast path's fused q/k/v and gate/up copies while
    it is built), the static KV cache, and the prefill's largest activations."""
    shape = ModelShape.from_config(config)
    weights = cost.params * dtype_bytes
    fused = 0
    if fused_copies:
        per_layer = (shape.hidden_size * shape.head_dim * (shape.num_heads + 2 * shape.num_kv_heads)
                     + 2 * shape.hidden_size * shape.ffn_hidden_size)
        fused = shape.num_layers * per_layer * dtype_bytes
    kv = batch * max_len * cost.kv_per_token * dtype_bytes
    tokens = batch * (max_len - 1)
    widest = max(2 * shape.num_heads * shape.head_dim + shape.num_kv_heads * shape.head_dim * 2,
                 3 * shape.ffn_hidden_size)
    activations = tokens * (4 * shape.hidden_size + widest) * dtype_bytes \
        + batch * config.vocab_size * 4
    return {"weights": weights + fused, "kv_cache": kv, "activations": activations}
