"""Reference models: the source with pruned units zeroed, to compare trimmed models against."""

from __future__ import annotations

import copy

import torch
from moe_masking import mask_experts
from torch import nn

from minitron_deploy.arch import get_adapter
from minitron_deploy.pruning.trim import KeepPlan, _expand_heads


class KeptChannelNorm(nn.Module):
    """Applies ``norm`` to the kept channels only and writes zeros elsewhere (the exact
    reference for hidden trimming without rescale, for RMSNorm and LayerNorm alike)."""

    def __init__(self, norm: nn.Module, kept: torch.Tensor) -> None:
        super().__init__()
        self.kept = kept
        self.inner = copy.deepcopy(norm)
        self.inner.weight = nn.Parameter(norm.weight.data[kept].clone())
        if getattr(norm, "bias", None) is not None:
            self.inner.bias = nn.Parameter(norm.bias.data[kept].clone())
        if hasattr(self.inner, "normalized_shape"):
            self.inner.normalized_shape = (len(kept),)

    def forward(self, x):
        out = torch.zeros_like(x)
        out[..., self.kept] = self.inner(x[..., self.kept])
        return out


def masked_reference(model: nn.Module, plan: KeepPlan, norms_over_kept: bool = True) -> nn.Module:
    """A copy of ``model`` whose dropped units are zeroed: MLP neurons (down_proj columns),
    heads (o_proj columns; q/k norms over the whole projection taken over the kept heads),
    hidden channels (embedding columns, every residual write, every hidden-width norm); dropped
    layers are skipped."""
    ref = copy.deepcopy(model)
    adapter = get_adapter(ref.config)
    cfg = ref.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    hidden_mask = torch.zeros(cfg.hidden_size, dtype=torch.bool)
    hidden_mask[plan.hidden] = True
    dropped_h = ~hidden_mask
    with torch.no_grad():
        for i, layer in enumerate(adapter.layers(ref)):
            if adapter.is_sparse(layer):
                mask_experts(adapter, layer, plan, i, dropped_h)
                down = None
            else:
                down = adapter.mlp_output_proj(layer)
                keep_n = torch.zeros(down.weight.shape[1], dtype=torch.bool)
                keep_n[plan.mlp.get(i, torch.arange(len(keep_n)))] = True
                down.weight[:, ~keep_n] = 0
            o = adapter.attention_output_proj(layer)
            keep_c = torch.zeros(o.weight.shape[1], dtype=torch.bool)
            keep_c[_expand_heads(plan.heads.get(i, torch.arange(cfg.num_attention_heads)),
                                 head_dim)] = True
            o.weight[:, ~keep_c] = 0
            for proj in (p for p in (o, down) if p is not None):
                proj.weight[dropped_h] = 0
                if proj.bias is not None:
                    proj.bias[dropped_h] = 0
            if adapter.get_attention(layer).q_norm is not None:
                attn = layer.self_attn
                heads = plan.heads.get(i, torch.arange(cfg.num_attention_heads))
                kv_heads = plan.kv_heads.get(i, torch.arange(cfg.num_key_value_heads))
                attn.q_norm = KeptChannelNorm(attn.q_norm, _expand_heads(heads, head_dim))
                attn.k_norm = KeptChannelNorm(attn.k_norm, _expand_heads(kv_heads, head_dim))
        adapter.embed_tokens(ref).weight[:, dropped_h] = 0
        decoder = adapter.decoder(ref)
        masked = (lambda norm: KeptChannelNorm(norm, plan.hidden)) if norms_over_kept \
            else (lambda norm: _zero_norm(norm, dropped_h, adapter.norm_offset))
        for layer in adapter.layers(ref):
            norms = adapter.layer_norms(layer)
            for name, child in list(layer.named_children()):
                if any(child is n for n in norms):
                    setattr(layer, name, masked(child))
        decoder.norm = masked(decoder.norm)
        decoder.layers = nn.ModuleList(adapter.layers(ref)[i] for i in plan.layers)
        if getattr(cfg, "layer_types", None) is not None:
            cfg.layer_types = [cfg.layer_types[i] for i in plan.layers]
    return ref


def _zero_norm(norm: nn.Module, dropped: torch.Tensor, offset: float) -> nn.Module:
    norm.weight.data[dropped] = -offset  # an effective scale of offset + w = 0
    return norm
