"""Mixture-of-experts layers as plain tensors, shared by the MoE families.

transformers 5 keeps a sparse MLP block as ``mlp.gate`` (the router: ``weight [E, H]``, a
softmax over all experts, then top-k, renormalised when ``norm_topk_prob``) and ``mlp.experts``
(fused ``gate_up_proj [E, 2I, H]``, gate rows first, and ``down_proj [E, H, I]``). Families that
can mix dense and sparse layers (Qwen3-MoE: ``mlp_only_layers``, ``decoder_sparse_step``) keep
a dense ``mlp`` (``gate_proj``/``up_proj``/``down_proj``) in the others.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from .base import DecoderAdapter, MLPWeights


@dataclass
class ExpertWeights:
    """One sparse layer's router and experts, the expert tensors fused as transformers stores them.

    ``router`` is ``[E, H]``; ``gate_up`` ``[E, 2I, H]`` (gate rows, then up rows); ``down``
    ``[E, H, I]``; ``top_k`` the experts each token is routed to. Families that store other
    layouts (gpt-oss: transposed, gate and up interleaved) convert on read and write. Optional:
    expert biases ``gate_up_bias [E, 2I]`` (same row order) and ``down_bias [E, H]``; a shared
    expert every token goes through (Qwen2-MoE: ``shared``, its neurons its own width axis) and
    its sigmoid gate ``shared_gate [1, H]``."""

    router: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor
    top_k: int
    router_bias: torch.Tensor | None = None
    gate_up_bias: torch.Tensor | None = None
    down_bias: torch.Tensor | None = None
    shared: MLPWeights | None = None
    shared_gate: torch.Tensor | None = None

    @property
    def num_experts(self) -> int:
        return self.gate_up.shape[0]

    @property
    def ffn(self) -> int:
        return self.down.shape[2]


@dataclass(frozen=True)
class ExpertShape:
    """The experts of every sparse layer: how many, their (uniform) width, and top-k; and the
    width of a shared expert (None: the family has none)."""

    num_experts: int
    ffn: int
    top_k: int
    shared_ffn: int | None = None

    def as_dict(self) -> dict[str, int]:
        shared = {} if self.shared_ffn is None \
            else {"shared_expert_ffn_hidden_size": self.shared_ffn}
        return {"num_experts": self.num_experts, "moe_ffn_hidden_size": self.ffn,
                "num_experts_per_tok": self.top_k, **shared}


class MoEAdapter(DecoderAdapter):
    """A Llama-style decoder whose MLPs are (some or all) sparse MoE blocks."""

    #: The config field holding the experts' width (Mixtral and OLMoE: ``intermediate_size``,
    #: which then is the ``ffn_hidden_size`` of the model's shape too).
    expert_ffn_field: ClassVar[str] = "moe_intermediate_size"
    trtllm = None
    trtllm_refusal = "mixture-of-experts export to TensorRT-LLM is not implemented"

    @property
    def experts_are_ffn(self) -> bool:
        """Whether the experts' width is the shape's ``ffn_hidden_size`` (no dense MLP axis)."""
        return self.expert_ffn_field == "intermediate_size"

    # --- structure ---------------------------------------------------------------------------
    def is_sparse(self, layer: nn.Module) -> bool:
        return hasattr(layer.mlp, "experts")

    def sparse_layers(self, config, num_layers: int | None = None) -> list[int]:
        """Indices of the sparse layers of the model ``config`` describes (of its first
        ``num_layers`` layers, default all)."""
        only_dense = set(getattr(config, "mlp_only_layers", None) or [])
        step = getattr(config, "decoder_sparse_step", 1) or 1
        n = config.num_hidden_layers if num_layers is None else num_layers
        return [i for i in range(n) if i not in only_dense and (i + 1) % step == 0]

    def expert_shape(self, config) -> ExpertShape:
        return ExpertShape(num_experts=config.num_experts, ffn=getattr(config, self.expert_ffn_field),
                           top_k=config.num_experts_per_tok)

    def apply_expert_shape(self, config, shape: ExpertShape) -> None:
        """Write ``shape`` into a transformers config."""
        config.num_experts = shape.num_experts
        config.num_experts_per_tok = shape.top_k
        setattr(config, self.expert_ffn_field, shape.ffn)

    def with_expert_shape(self, config, shape: ExpertShape):
        """A copy of ``config`` with the experts of ``shape``."""
        config = copy.deepcopy(config)
        self.apply_expert_shape(config, shape)
        return config

    # --- weights -----------------------------------------------------------------------------
    def router(self, layer: nn.Module) -> nn.Module:
        return layer.mlp.gate

    def experts(self, layer: nn.Module) -> nn.Module:
        return layer.mlp.experts

    def expert_forward(self, experts: nn.Module, e: int,
                       x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert ``e`` of an experts module on tokens ``x [n, H]``, as its eager forward
        computes it: the intermediate activation ``[n, I]`` (neurons in ``ExpertWeights``
        order) and the output ``[n, H]``."""
        gate, up = F.linear(x, experts.gate_up_proj[e]).chunk(2, dim=-1)
        act = experts.act_fn(gate) * up
        return act, F.linear(act, experts.down_proj[e])

    def get_experts(self, layer: nn.Module) -> ExpertWeights:
        router, experts = self.router(layer), self.experts(layer)
        return ExpertWeights(router=router.weight.data, gate_up=experts.gate_up_proj.data,
                             down=experts.down_proj.data, top_k=router.top_k,
                             router_bias=getattr(router, "bias", None))

    def set_experts(self, layer: nn.Module, w: ExpertWeights) -> None:
        """Install ``w`` (copied) and keep the modules' cached counts in step with it."""
        router, experts = self.router(layer), self.experts(layer)
        router.weight = nn.Parameter(w.router.detach().clone())
        if w.router_bias is not None:
            router.bias = nn.Parameter(w.router_bias.detach().clone())
        router.num_experts, router.top_k = w.num_experts, w.top_k
        router.hidden_dim = w.router.shape[1]
        experts.gate_up_proj = nn.Parameter(w.gate_up.detach().clone())
        experts.down_proj = nn.Parameter(w.down.detach().clone())
        experts.num_experts, experts.intermediate_dim = w.num_experts, w.ffn
        experts.hidden_dim = w.down.shape[1]
        if hasattr(layer.mlp, "top_k"):
            layer.mlp.top_k = w.top_k

    def update_config(self, config, kept_layers: list[int]) -> None:
        """Which kept layers are dense, as explicit ``mlp_only_layers`` of the new indices."""
        super().update_config(config, kept_layers)
        if hasattr(config, "mlp_only_layers"):
            # the shape (new depth) is already written: read the pattern at the old indices
            sparse = set(self.sparse_layers(config, max(kept_layers) + 1))
            config.mlp_only_layers = [new for new, old in enumerate(kept_layers)
                                      if old not in sparse]
            config.decoder_sparse_step = 1

