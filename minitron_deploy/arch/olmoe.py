"""OLMoE: RMSNorm on q and k over the whole projection (as OLMo 2, but before the norms of a
pre-norm decoder) and sparse MoE MLPs of width ``intermediate_size`` in every layer.

transformers sizes the q norm by ``hidden_size`` and the k norm by ``hidden_size // heads * kv
heads``, so a loadable OLMoE keeps ``heads * head_dim == hidden_size``: hidden and heads are
pruned together."""

from __future__ import annotations

from ..core.shape import ModelShape
from .moe import MoEAdapter


class OlmoeAdapter(MoEAdapter):
    model_types = ("olmoe",)
    static_features = frozenset({"projection_qk_norm", "moe"})
    expert_ffn_field = "intermediate_size"

    def shape_error(self, config, shape: ModelShape) -> str | None:
        if shape.num_heads * shape.head_dim != shape.hidden_size:
            return (f"OLMoE sizes its q norm by hidden_size, so heads x head_dim "
                    f"({shape.num_heads} x {shape.head_dim}) must equal hidden_size "
                    f"({shape.hidden_size}): prune hidden and heads together")
        return None
