"""Qwen3-MoE: the Qwen3 attention (per-head q/k RMSNorm, no q/k/v biases) with sparse MoE MLPs
(softmax router, top-k renormalised when ``norm_topk_prob``); ``mlp_only_layers`` and
``decoder_sparse_step`` keep some layers dense (``intermediate_size``), the experts' width is
``moe_intermediate_size``."""

from .moe import MoEAdapter


class Qwen3MoeAdapter(MoEAdapter):
    model_types = ("qwen3_moe",)
    static_features = frozenset({"head_qk_norm", "moe"})
