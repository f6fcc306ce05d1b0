"""Gemma 2: (1 + w) RMSNorm, norms before and after attention and MLP, embeddings scaled by
sqrt(hidden size), attention scaled by query_pre_attn_scalar, tanh soft-capping of attention
and final logits, alternating sliding-window layers (``layer_types``).

transformers scales the embeddings by sqrt(config.hidden_size), recomputed at load, so a model
trimmed to a smaller hidden size keeps the original scale by folding sqrt(H_old / H_new) into
the embedding weights; with tied embeddings the final norm divides it back out of the logits.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import DecoderAdapter


class Gemma2Adapter(DecoderAdapter):
    model_types = ("gemma2",)
    norm_offset = 1.0
    static_features = frozenset({"offset_norm", "sandwich_norms", "embedding_scale",
                                 "attention_scalar"})
    trtllm = None
    trtllm_refusal = "the reference runner does not implement Gemma's sandwich norms"

    def layer_norms(self, layer: nn.Module) -> list[nn.Module]:
        return [layer.input_layernorm, layer.post_attention_layernorm,
                layer.pre_feedforward_layernorm, layer.post_feedforward_layernorm]

    def logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        logits = super().logits(model, hidden)
        cap = model.config.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def rescale_embedding(self, model: nn.Module, old_hidden: int, new_hidden: int) -> None:
        embed = self.embed_tokens(model)
        ratio = math.sqrt(old_hidden) / math.sqrt(new_hidden)
        tied = self.lm_head(model).weight is embed.weight
        embed.weight.data.mul_(ratio)
        embed.scalar_embed_scale = new_hidden ** 0.5  # what loading the trimmed config computes
        embed.embed_scale.fill_(embed.scalar_embed_scale)
        if tied:  # the shared matrix grew by ratio: the final norm takes it back
            self.scale_norm(self.final_norm(model), 1.0 / ratio)
