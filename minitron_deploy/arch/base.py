"""Common interface of the architecture adapters.

An adapter holds everything a family needs: where it keeps its weights, exposed as plain
tensors (q/k/v/o, gate/up/down, hidden-width norms) so trimming and scoring are written once;
the architecture features it has (``features.FEATURES``), which consumers refuse by name when
they do not implement them; and its TensorRT-LLM layout (``trtllm.TrtllmLayout``) or why there
is none. Fused layouts (Phi-3 ``qkv_proj`` / ``gate_up_proj``) are split on read, fused on write.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .trtllm import TrtllmLayout


@dataclass
class AttentionWeights:
    """Attention projections of one layer, unfused. Weights are ``[out, in]`` like nn.Linear."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    q_bias: torch.Tensor | None = None
    k_bias: torch.Tensor | None = None
    v_bias: torch.Tensor | None = None
    o_bias: torch.Tensor | None = None
    #: Norm weights over the whole q / k projection (OLMo 2), row-aligned with ``q`` / ``k``.
    q_norm: torch.Tensor | None = None
    k_norm: torch.Tensor | None = None
    #: One value per query head (gpt-oss attention sinks), sliced with the heads.
    sinks: torch.Tensor | None = None


@dataclass
class MLPWeights:
    """MLP projections of one layer; ``gate`` is None for non-gated MLPs (Nemotron)."""

    up: torch.Tensor
    down: torch.Tensor
    gate: torch.Tensor | None = None
    up_bias: torch.Tensor | None = None
    down_bias: torch.Tensor | None = None
    gate_bias: torch.Tensor | None = None


def new_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An nn.Linear holding exactly ``weight`` (and ``bias``), same dtype and device; trainable
    (``trim_model`` carries over frozen flags of the source)."""
    out_features, in_features = weight.shape
    linear = nn.Linear(in_features, out_features, bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.detach().clone())
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach().clone())
    return linear


def _bias(linear: nn.Linear) -> torch.Tensor | None:
    return None if linear.bias is None else linear.bias.data


class DecoderAdapter:
    """Llama-style decoder: ``model.model.layers[i].self_attn.{q,k,v,o}_proj``,
    ``mlp.{gate,up,down}_proj``, ``input_layernorm``/``post_attention_layernorm``, ``model.norm``.

    Families that differ override only the accessors that differ.
    """

    model_types: ClassVar[tuple[str, ...]] = ()
    #: "rms" norms only rescale; "layer" norms also subtract the mean (matters when trimming hidden).
    norm_kind: ClassVar[str] = "rms"
    #: Norm weights are stored as ``w`` for a scale of ``norm_offset + w`` (Gemma: 1).
    norm_offset: ClassVar[float] = 0.0
    #: Architecture features every model of the family has (names from ``features.FEATURES``).
    static_features: ClassVar[frozenset[str]] = frozenset()
    #: The TensorRT-LLM checkpoint layout, or None with the reason in ``trtllm_refusal``.
    trtllm: ClassVar[type[TrtllmLayout] | None] = TrtllmLayout
    trtllm_refusal: ClassVar[str] = ""
    #: Whether vLLM has this architecture (``minitron serve`` / ``bench --backend vllm``).
    vllm: ClassVar[bool] = True

    # --- capabilities ------------------------------------------------------------------------
    def features(self, config) -> set[str]:
        """The architecture features of the model ``config`` describes (static ones, plus those
        its config switches on: biases, partial rotary, activation, soft-capping)."""
        found = set(self.static_features)
        rope = getattr(config, "rope_parameters", None) or {}
        partial = rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0))
        if partial not in (None, 1.0):
            found.add("partial_rotary")
        if getattr(config, "attention_bias", False):
            found.add("qkv_bias")
        if self.activation(config) != "silu":
            found.add("activation")
        if getattr(config, "final_logit_softcapping", None) is not None \
                or getattr(config, "attn_logit_softcapping", None) is not None:
            found.add("logit_softcap")
        return found

    def shape_error(self, config, shape) -> str | None:
        """Why transformers would build this family at ``shape`` (a ``ModelShape``) with
        weights of other sizes than trimming gives, beyond what its config validates; or None."""
        return None

    @staticmethod
    def activation(config) -> str:
        return getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", "silu")

    # --- structure ---------------------------------------------------------------------------
    def decoder(self, model: nn.Module) -> nn.Module:
        return model.model

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return self.decoder(model).layers

    def embed_tokens(self, model: nn.Module) -> nn.Embedding:
        return self.decoder(model).embed_tokens

    def lm_head(self, model: nn.Module) -> nn.Linear:
        return model.lm_head

    def final_norm(self, model: nn.Module) -> nn.Module:
        return self.decoder(model).norm

    def logits(self, model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The model's logits from the last decoder layer's output (final norm, LM head)."""
        return self.lm_head(model)(self.final_norm(model)(hidden))

    def layer_norms(self, layer: nn.Module) -> list[nn.Module]:
        """Norms of one layer whose width is the hidden size (not q/k norms), in forward order."""
        return [layer.input_layernorm, layer.post_attention_layernorm]

    def residual_norms(self, model: nn.Module) -> list[nn.Module]:
        """Every norm whose width is the hidden size, in forward order."""
        norms = [n for layer in self.layers(model) for n in self.layer_norms(layer)]
        return norms + [self.final_norm(model)]

    def qk_norms(self, layer: nn.Module) -> tuple[nn.Module, nn.Module] | None:
        """The q and k norms of one layer, or None (per head or over the whole projection,
        as ``static_features`` says)."""
        if self.static_features & {"head_qk_norm", "projection_qk_norm"}:
            return layer.self_attn.q_norm, layer.self_attn.k_norm
        return None

    def is_sparse(self, layer: nn.Module) -> bool:
        """Whether the layer's MLP is a mixture of experts (``moe.MoEAdapter``)."""
        return False

    def attention_output_proj(self, layer: nn.Module) -> nn.Linear:
        """The projection whose input is the concatenated per-head attention output."""
        return layer.self_attn.o_proj

    def mlp_output_proj(self, layer: nn.Module) -> nn.Linear:
        """The projection whose input is the MLP's intermediate activation."""
        return layer.mlp.down_proj

    # --- attention ---------------------------------------------------------------------------
    def get_attention(self, layer: nn.Module) -> AttentionWeights:
        attn = layer.self_attn
        w = AttentionWeights(
            q=attn.q_proj.weight.data, k=attn.k_proj.weight.data, v=attn.v_proj.weight.data,
            o=attn.o_proj.weight.data, q_bias=_bias(attn.q_proj), k_bias=_bias(attn.k_proj),
            v_bias=_bias(attn.v_proj), o_bias=_bias(attn.o_proj),
        )
        if "projection_qk_norm" in self.static_features:  # sliced with q / k's rows
            w.q_norm, w.k_norm = attn.q_norm.weight.data, attn.k_norm.weight.data
        return w

    def set_attention(self, layer: nn.Module, w: AttentionWeights, num_heads: int,
                      num_kv_heads: int) -> None:
        attn = layer.self_attn
        attn.q_proj = new_linear(w.q, w.q_bias)
        attn.k_proj = new_linear(w.k, w.k_bias)
        attn.v_proj = new_linear(w.v, w.v_bias)
        attn.o_proj = new_linear(w.o, w.o_bias)
        if "projection_qk_norm" in self.static_features:
            attn.q_norm.weight = nn.Parameter(w.q_norm.detach().clone())
            attn.k_norm.weight = nn.Parameter(w.k_norm.detach().clone())
        self._set_head_counts(attn, num_heads, num_kv_heads)

    @staticmethod
    def _set_head_counts(attn: nn.Module, num_heads: int, num_kv_heads: int) -> None:
        """Keep the attention module's cached counts in step with the new shape."""
        for name, value in (("num_heads", num_heads), ("num_key_value_heads", num_kv_heads),
                            ("num_key_value_groups", num_heads // num_kv_heads)):
            if hasattr(attn, name):
                setattr(attn, name, value)

    # --- MLP ---------------------------------------------------------------------------------
    def get_mlp(self, layer: nn.Module) -> MLPWeights:
        mlp = layer.mlp
        return MLPWeights(
            gate=mlp.gate_proj.weight.data, up=mlp.up_proj.weight.data,
            down=mlp.down_proj.weight.data, gate_bias=_bias(mlp.gate_proj),
            up_bias=_bias(mlp.up_proj), down_bias=_bias(mlp.down_proj),
        )

    def set_mlp(self, layer: nn.Module, w: MLPWeights) -> None:
        mlp = layer.mlp
        mlp.gate_proj = new_linear(w.gate, w.gate_bias)
        mlp.up_proj = new_linear(w.up, w.up_bias)
        mlp.down_proj = new_linear(w.down, w.down_bias)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = w.up.shape[0]

    def load_options(self, config) -> dict:
        """Extra ``from_pretrained`` arguments the model ``config`` describes needs (gpt-oss:
        MXFP4 experts dequantized)."""
        return {}

    def vllm_overrides(self, config) -> dict | None:
        """Config overrides vLLM needs to load this checkpoint as transformers does, or None."""
        return None

    # --- trimming hooks ----------------------------------------------------------------------
    def scale_norm(self, norm: nn.Module, factor: float) -> None:
        """Multiply a norm's effective scale (``norm_offset + w``) by ``factor``, in place;
        ``factor`` 1 leaves the weight bit for bit."""
        if factor != 1.0:
            w = norm.weight.data
            w.copy_(w * factor + self.norm_offset * (factor - 1.0))

    def rescale_embedding(self, model: nn.Module, old_hidden: int, new_hidden: int) -> None:
        """Keep what the embedding feeds the decoder when the hidden size changes (a no-op
        unless the family scales its embeddings by the hidden size)."""

    # --- config ------------------------------------------------------------------------------
    def update_config(self, config, kept_layers: list[int]) -> None:
        """Family-specific config fields that depend on which layers remain."""
        layer_types = getattr(config, "layer_types", None)
        if layer_types is not None:
            config.layer_types = [layer_types[i] for i in kept_layers]
