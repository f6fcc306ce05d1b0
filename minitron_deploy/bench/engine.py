"""The torch fast path's model: fused weights of a Llama-like decoder and its functional forward.

Weights are taken once from a Hugging Face model through the arch adapters (q/k/v fused into
one matrix, gate/up into another) and held as module buffers, so a CUDA graph captures their
addresses instead of copying them. It implements the architecture features in
``arch.FAST_PATH`` (fused projections, q/k/v biases, q/k norms per head or over the whole
projection, norms after attention and MLP instead of before); a model whose adapter
declares any other feature, or that has o_proj or MLP biases (which the forward has no term
for), is refused with a one-line reason. A model whose linears hold FP8 weights with scales
(``fp8.py``) keeps them FP8, fused alike, and runs them as FP8 GEMMs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import FAST_PATH, describe, get_adapter
from ..core.errors import MinitronError
from .fp8 import Fp8Weight, ScaleTable, fused, is_fp8, linear

#: Rope types whose frequencies do not depend on the sequence length (precomputable tables).
_STATIC_ROPE = {"default", "llama3", "linear", "yarn"}


@dataclass(frozen=True)
class EngineShape:
    """Static dimensions the forward needs (plain ints, so compiled code specializes on them)."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    eps: float
    #: Norms after attention and MLP (OLMo 2) instead of before them.
    post_norms: bool = False
    #: q/k norms over the whole projection (OLMo 2) instead of per head.
    projection_qk_norm: bool = False

    @property
    def qkv_split(self) -> list[int]:
        kv = self.num_kv_heads * self.head_dim
        return [self.num_heads * self.head_dim, kv, kv]


def check_supported(config, max_len: int) -> None:
    """Refuse configs the fast path does not implement exactly (before any weight is touched)."""
    missing = get_adapter(config).features(config) - FAST_PATH
    if missing:
        raise MinitronError(f"the torch fast path does not support {describe(missing)} "
                            f"({config.model_type}); use --backend hf")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") not in _STATIC_ROPE:
        raise MinitronError(f"rope type {rope.get('rope_type')!r} is not supported by the torch "
                            "backend; use --backend hf")
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) and max_len > window:
        raise MinitronError(f"sequence length {max_len} exceeds the sliding window {window}; "
                            "the torch backend implements full attention only")


class EngineWeights(nn.Module):
    """Every weight of the decoder as buffers, fused for few large matrix products."""

    def __init__(self, model: nn.Module, max_len: int):
        super().__init__()
        config = model.config
        check_supported(config, max_len)
        adapter = get_adapter(config)
        layers = adapter.layers(model)
        features = adapter.features(config)
        self.shape = EngineShape(
            num_layers=len(layers), num_heads=config.num_attention_heads,
            num_kv_heads=config.num_key_value_heads or config.num_attention_heads,
            head_dim=adapter.get_attention(layers[0]).q.shape[0] // config.num_attention_heads,
            eps=float(config.rms_norm_eps), post_norms="post_norms" in features,
            projection_qk_norm="projection_qk_norm" in features)
        self.register_buffer("embed", adapter.embed_tokens(model).weight.detach())
        self.register_buffer("lm_head", adapter.lm_head(model).weight.detach())
        self.register_buffer("norm", adapter.final_norm(model).weight.detach())
        cos, sin = _rope_tables(model, max_len, self.embed)
        self.register_buffer("cos", cos)
        self.register_buffer("sin", sin)
        scales = ScaleTable(model) if is_fp8(model) else None
        self.layers = nn.ModuleList(_LayerWeights(adapter, layer, scales) for layer in layers)

    def layer_tensors(self) -> list[LayerTensors]:
        """Per-layer weights as plain tuples (what the compiled layer functions take); an FP8
        projection as an :class:`Fp8Weight` of its matrix and scales."""
        return [LayerTensors(**{f: _weight(layer, f) for f in LayerTensors._fields})
                for layer in self.layers]


def _weight(layer: nn.Module, name: str) -> torch.Tensor | Fp8Weight | None:
    scale = getattr(layer, f"{name}_scale", None)
    return getattr(layer, name) if scale is None else Fp8Weight(getattr(layer, name), scale)


class LayerTensors(NamedTuple):
    """One layer's weights; ``ln1``/``ln2`` are the norms before (or, with ``post_norms``,
    after) attention and MLP; ``qkv_bias`` and ``q_norm``/``k_norm`` may be None."""

    ln1: torch.Tensor
    ln2: torch.Tensor
    qkv: torch.Tensor | Fp8Weight
    qkv_bias: torch.Tensor | None
    o: torch.Tensor | Fp8Weight
    gate_up: torch.Tensor | Fp8Weight
    down: torch.Tensor | Fp8Weight
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None


class _LayerWeights(nn.Module):
    """One decoder layer: fused qkv (+bias), o, fused gate_up, down (each FP8 with a
    ``<name>_scale`` where the model's linears are), and its norms."""

    def __init__(self, adapter, layer: nn.Module, scales: ScaleTable | None = None):
        super().__init__()
        attn, mlp = adapter.get_attention(layer), adapter.get_mlp(layer)
        biased = [name for name, bias in (("o_proj", attn.o_bias), ("gate_proj", mlp.gate_bias),
                                          ("up_proj", mlp.up_bias), ("down_proj", mlp.down_bias))
                  if bias is not None]
        if biased:
            raise MinitronError(f"the torch backend has no {', '.join(biased)} biases, which this "
                                "model has; use --backend hf")
        ln1, ln2 = adapter.layer_norms(layer)
        self.register_buffer("ln1", ln1.weight.detach())
        self.register_buffer("ln2", ln2.weight.detach())
        for name, parts in (("qkv", [attn.q, attn.k, attn.v]), ("o", [attn.o]),
                            ("gate_up", [mlp.gate, mlp.up]), ("down", [mlp.down])):
            weight = fused(parts, scales)
            fp8 = isinstance(weight, Fp8Weight)
            self.register_buffer(name, weight.weight if fp8 else weight)
            self.register_buffer(f"{name}_scale", weight.scale if fp8 else None)
        biases = (attn.q_bias, attn.k_bias, attn.v_bias)
        self.register_buffer("qkv_bias", None if biases[0] is None else torch.cat(biases).detach())
        qk_norms = adapter.qk_norms(layer)
        self.register_buffer("q_norm", None if qk_norms is None else qk_norms[0].weight.detach())
        self.register_buffer("k_norm", None if qk_norms is None else qk_norms[1].weight.detach())


def _rope_tables(model: nn.Module, max_len: int, like: torch.Tensor):
    """cos/sin ``[max_len, head_dim]`` from the model's own rotary module (scaling included)."""
    rotary = get_adapter(model.config).decoder(model).rotary_emb
    positions = torch.arange(max_len, device=like.device)[None]
    dummy = torch.empty(0, device=like.device, dtype=torch.float32)
    with torch.no_grad():
        cos, sin = rotary(dummy, positions)
    return cos[0].to(like.dtype), sin[0].to(like.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in float32, cast back before the weight (as transformers computes it)."""
    xf = x.float()
    return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def _qkv(x, w: LayerTensors, s: EngineShape, cos, sin):
    """Normed input -> q, k, v as ``[B, heads, S, head_dim]`` with rope applied."""
    b, n, _ = x.shape
    h = x if s.post_norms else rms_norm(x, w.ln1, s.eps)
    q, k, v = linear(h, w.qkv, w.qkv_bias).split(s.qkv_split, dim=-1)
    if s.projection_qk_norm:
        q, k = rms_norm(q, w.q_norm, s.eps), rms_norm(k, w.k_norm, s.eps)
    q = q.view(b, n, s.num_heads, s.head_dim)
    k = k.view(b, n, s.num_kv_heads, s.head_dim)
    if w.q_norm is not None and not s.projection_qk_norm:
        q, k = rms_norm(q, w.q_norm, s.eps), rms_norm(k, w.k_norm, s.eps)
    cos, sin = cos[:, None], sin[:, None]  # [S, 1, D] broadcasts over heads
    q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    v = v.view(b, n, s.num_kv_heads, s.head_dim)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def _mlp_residual(x, attn_out, w: LayerTensors, s: EngineShape):
    if s.post_norms:
        x = x + rms_norm(linear(attn_out, w.o), w.ln1, s.eps)
        gate, up = linear(x, w.gate_up).chunk(2, dim=-1)
        return x + rms_norm(linear(F.silu(gate) * up, w.down), w.ln2, s.eps)
    x = x + linear(attn_out, w.o)
    gate, up = linear(rms_norm(x, w.ln2, s.eps), w.gate_up).chunk(2, dim=-1)
    return x + linear(F.silu(gate) * up, w.down)


def prefill_layer(x, w: LayerTensors, s: EngineShape, cos, sin, k_cache, v_cache):
    """Causal attention over the prompt (positions 0..S-1); writes the prompt's K/V to the cache."""
    q, k, v = _qkv(x, w, s, cos, sin)
    n = x.shape[1]
    k_cache[:, :, :n].copy_(k)
    v_cache[:, :, :n].copy_(v)
    groups = s.num_heads // s.num_kv_heads
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return _mlp_residual(x, out.transpose(1, 2).reshape(x.shape[0], n, -1), w, s)


def decode_layer(x, w: LayerTensors, s: EngineShape, cos, sin, k_cache, v_cache, pos, mask):
    """One token per sequence at position ``pos`` (a 1-element device tensor) against the
    static cache; ``mask`` [1, 1, 1, L] hides cache slots after ``pos``.

    The query heads of one KV group are laid out as the query length, so grouped-query
    attention needs no repeated K/V.
    """
    q, k, v = _qkv(x, w, s, cos, sin)
    k_cache.index_copy_(2, pos, k)
    v_cache.index_copy_(2, pos, v)
    b = x.shape[0]
    groups = s.num_heads // s.num_kv_heads
    q = q.reshape(b, s.num_kv_heads, groups, s.head_dim)
    out = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask)
    return _mlp_residual(x, out.reshape(b, 1, -1), w, s)


def next_token(x, norm: torch.Tensor, lm_head: torch.Tensor, eps: float) -> torch.Tensor:
    """Greedy token ``[B]`` from the last hidden state ``[B, 1, H]``."""
    return F.linear(rms_norm(x[:, -1], norm, eps), lm_head).argmax(dim=-1)
