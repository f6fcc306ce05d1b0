"""Gemma 2: (1 + w) RMSNorm, norms before and after attention and MLP, embeddings scaled by
sqrt(hidden size), attention scaled by query_pre_attn_scalar, tanh soft-capping of attention
and final logits, alternating sliding-window layers (``layer_types``).

TensorRT-LLM's ``Gemma2ForCausalLM`` stores the norms as 1 + w, scales the embeddings by
sqrt(hidden_size) itself and repeats one sliding/full pattern over the layers
(``_sliding_window_pattern``: layer i is sliding unless (i + 1) % pattern == 0).

transformers scales the embeddings by sqrt(config.hidden_size), recomputed at load, so a model
trimmed to a smaller hidden size keeps the original scale by folding sqrt(H_old / H_new) into
the embedding weights; with tied embeddings the final norm divides it back out of the logits.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.errors import MinitronError
from .base import DecoderAdapter
from .trtllm import TrtllmLayout


def sliding_pattern(layer_types: list[str]) -> int:
    """TensorRT-LLM's ``_sliding_window_pattern`` for ``layer_types`` (depth pruning can leave
    types no single pattern repeats: those are refused)."""
    n = len(layer_types)
    for pattern in range(1, n + 2):
        if all(((i + 1) % pattern != 0) == (t == "sliding_attention")
               for i, t in enumerate(layer_types)):
            return pattern
    raise MinitronError(f"TensorRT-LLM repeats one sliding/full pattern over the layers, and "
                        f"these layer types repeat none: {', '.join(layer_types)}")


class Gemma2Trtllm(TrtllmLayout):
    architecture = "Gemma2ForCausalLM"

    def config_fields(self, config) -> dict:
        return {**super().config_fields(config), "hidden_act": self.adapter.activation(config),
                "inter_layernorms": True, "query_pre_attn_scalar": config.query_pre_attn_scalar,
                "final_logit_softcapping": config.final_logit_softcapping,
                "attn_logit_softcapping": config.attn_logit_softcapping}

    def window_fields(self, config) -> dict:
        return {"sliding_window": config.sliding_window,
                "_sliding_window_pattern": sliding_pattern(config.layer_types)}

    def norm(self, norm: nn.Module) -> dict[str, torch.Tensor]:
        return {"weight": norm.weight.data + 1.0}

    def layer_norms(self, layer: nn.Module) -> dict[str, nn.Module]:
        return {"input_layernorm": layer.input_layernorm,
                "post_layernorm": layer.post_attention_layernorm,
                "pre_feedforward_layernorm": layer.pre_feedforward_layernorm,
                "post_feedforward_layernorm": layer.post_feedforward_layernorm}


class Gemma2Adapter(DecoderAdapter):
    model_types = ("gemma2",)
    norm_offset = 1.0
    static_features = frozenset({"offset_norm", "sandwich_norms", "embedding_scale",
                                 "attention_scalar"})
    trtllm = Gemma2Trtllm

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
