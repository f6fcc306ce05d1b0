"""The vocabulary of architecture features a family can have beyond a plain pre-norm Llama decoder.

Adapters declare the features of a model (:meth:`DecoderAdapter.features`); a consumer that
implements only some of them (the torch fast path, an exporter) refuses the rest by these names,
with these descriptions, in one line.
"""

from __future__ import annotations

FEATURES: dict[str, str] = {
    "fused_projections": "fused q/k/v and gate/up projections",
    "qkv_bias": "q/k/v biases",
    "head_qk_norm": "per-head q/k norms",
    "projection_qk_norm": "q/k norms over the whole projection",
    "layernorm": "LayerNorm",
    "offset_norm": "(1 + w) RMSNorm",
    "sandwich_norms": "norms before and after attention and MLP",
    "post_norms": "norms after attention and MLP instead of before",
    "plain_mlp": "a non-gated MLP",
    "activation": "an activation other than SiLU",
    "partial_rotary": "partial rotary embeddings",
    "embedding_scale": "embeddings scaled by sqrt(hidden size)",
    "attention_scalar": "attention scaled by query_pre_attn_scalar",
    "logit_softcap": "logit soft-capping",
    "local_rope": "separate rope bases for sliding and full layers",
    "moe": "mixture-of-experts MLPs",
    "attention_sinks": "attention sinks",
    "clamped_swiglu": "a clamped SwiGLU with biased experts",
}

#: What the torch fast path (``bench/engine.py``) implements.
FAST_PATH: frozenset[str] = frozenset({"fused_projections", "qkv_bias", "head_qk_norm",
                                       "projection_qk_norm", "post_norms"})


def describe(names) -> str:
    """``"a, b"``: the descriptions of feature ``names`` in vocabulary order."""
    return ", ".join(FEATURES[n] for n in FEATURES if n in set(names))
