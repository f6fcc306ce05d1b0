"""gpt-oss: a decoder of sparse MoE layers only, with

- attention sinks: one learned logit per query head (``self_attn.sinks``) joins each softmax
  and is dropped after it; sliced with the query heads;
- biases on q/k/v and o (``attention_bias``), on the router (``mlp.router``: top-k of the
  logits, then a softmax over those k) and on the experts;
- experts stored transposed, gate and up interleaved: ``gate_up_proj [E, H, 2I]`` (gate in the
  even columns, up in the odd ones), ``gate_up_proj_bias [E, 2I]`` alike, ``down_proj
  [E, I, H]``, ``down_proj_bias [E, H]``; read into (and written back from) the common
  ``ExpertWeights`` layout;
- a clamped SwiGLU: ``(clamp(up, -limit, limit) + 1) * g * sigmoid(alpha * g)`` with
  ``g = clamp(gate, max=limit)``;
- sliding and full layers by ``layer_types`` (sliced with the kept layers).

The released checkpoints store the experts in MXFP4 (``quant_method: mxfp4``): they load
dequantized (``load_options``), which is exact, as every MXFP4 value is a bfloat16.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import MinitronError
from .base import AttentionWeights
from .moe import ExpertWeights, MoEAdapter

MXFP4 = "mxfp4"
#: The SwiGLU clamp vLLM's gpt-oss expert kernels hard-code (the released checkpoints' value).
VLLM_SWIGLU_LIMIT = 7.0


def mxfp4_dequantized(config) -> dict:
    """``from_pretrained`` arguments that load an MXFP4 checkpoint dequantized (an empty dict
    for any other): transformers would otherwise keep MXFP4 experts on a GPU with its kernels,
    which no trimming or scoring code reads."""
    quant = getattr(config, "quantization_config", None)
    method = quant.get("quant_method") if isinstance(quant, dict) \
        else getattr(quant, "quant_method", None)
    if str(getattr(method, "value", method)) != MXFP4:
        return {}
    from transformers import Mxfp4Config

    return {"quantization_config": Mxfp4Config(dequantize=True)}


def _deinterleave(t: torch.Tensor) -> torch.Tensor:
    """``[..., 2I]`` with gate/up interleaved -> ``[..., 2I]`` gate first, then up."""
    return torch.cat([t[..., ::2], t[..., 1::2]], dim=-1)


def _interleave(t: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_deinterleave`."""
    gate, up = t.chunk(2, dim=-1)
    return torch.stack([gate, up], dim=-1).flatten(-2)


class GptOssAdapter(MoEAdapter):
    model_types = ("gpt_oss",)
    static_features = frozenset({"moe", "attention_sinks", "clamped_swiglu"})
    expert_ffn_field = "intermediate_size"

    def vllm_overrides(self, config) -> dict | None:
        """None; vLLM 0.32's gpt-oss slides the window on the even layers whatever
        ``layer_types`` says, and clamps its SwiGLU at 7, so checkpoints that differ (a depth
        pruning that broke the alternation, another ``swiglu_limit``) are refused."""
        types = list(getattr(config, "layer_types", None) or [])
        assumed = ["sliding_attention" if i % 2 == 0 else "full_attention"
                   for i in range(len(types))]
        if config.sliding_window and types != assumed:
            raise MinitronError(
                "vLLM's gpt-oss puts the sliding window on the even layers, but this "
                f"checkpoint's layer_types are {', '.join(t.split('_')[0] for t in types)}: "
                "drop layers in sliding/full pairs (--drop-layers) or serve it with "
                "transformers")
        if config.swiglu_limit != VLLM_SWIGLU_LIMIT:
            raise MinitronError(f"vLLM's gpt-oss clamps its SwiGLU at {VLLM_SWIGLU_LIMIT:g}, "
                                f"this checkpoint at {config.swiglu_limit:g}: serve it with "
                                "transformers")
        return None

    def load_options(self, config) -> dict:
        return mxfp4_dequantized(config)

    def get_attention(self, layer: nn.Module) -> AttentionWeights:
        w = super().get_attention(layer)
        w.sinks = layer.self_attn.sinks.data
        return w

    def set_attention(self, layer: nn.Module, w: AttentionWeights, num_heads: int,
                      num_kv_heads: int) -> None:
        super().set_attention(layer, w, num_heads, num_kv_heads)
        layer.self_attn.sinks = nn.Parameter(w.sinks.detach().clone())

    def router(self, layer: nn.Module) -> nn.Module:
        return layer.mlp.router

    def expert_forward(self, experts: nn.Module, e: int,
                       x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        act = experts._apply_gate(x @ experts.gate_up_proj[e] + experts.gate_up_proj_bias[e])
        return act, act @ experts.down_proj[e] + experts.down_proj_bias[e]

    def get_experts(self, layer: nn.Module) -> ExpertWeights:
        router, experts = self.router(layer), self.experts(layer)
        return ExpertWeights(
            router=router.weight.data, router_bias=router.bias.data, top_k=router.top_k,
            gate_up=_deinterleave(experts.gate_up_proj.data).transpose(1, 2),
            gate_up_bias=_deinterleave(experts.gate_up_proj_bias.data),
            down=experts.down_proj.data.transpose(1, 2), down_bias=experts.down_proj_bias.data)

    def set_experts(self, layer: nn.Module, w: ExpertWeights) -> None:
        router, experts = self.router(layer), self.experts(layer)
        router.weight = nn.Parameter(w.router.detach().clone())
        router.bias = nn.Parameter(w.router_bias.detach().clone())
        router.num_experts, router.top_k = w.num_experts, w.top_k
        router.hidden_dim = w.router.shape[1]
        for name, value in (("gate_up_proj", _interleave(w.gate_up.transpose(1, 2))),
                            ("gate_up_proj_bias", _interleave(w.gate_up_bias)),
                            ("down_proj", w.down.transpose(1, 2)), ("down_proj_bias", w.down_bias)):
            setattr(experts, name, nn.Parameter(value.detach().contiguous().clone()))
        experts.num_experts, experts.intermediate_size = w.num_experts, w.ffn
        experts.hidden_size = w.down.shape[1]
