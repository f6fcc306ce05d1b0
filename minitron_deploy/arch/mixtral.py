"""Mixtral: the Mistral layout whose every MLP is a sparse MoE block (softmax router, top-k
always renormalised); the experts' width is ``intermediate_size``, so it is the shape's
``ffn_hidden_size`` too."""

from .moe import MoEAdapter


class MixtralAdapter(MoEAdapter):
    model_types = ("mixtral",)
    static_features = frozenset({"moe"})
    expert_ffn_field = "intermediate_size"
