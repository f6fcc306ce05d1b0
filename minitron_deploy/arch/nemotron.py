"""Nemotron: non-gated MLP (up -> relu^2 -> down) and LayerNorm1P (weight + 1, with bias)."""

from torch import nn

from .base import DecoderAdapter, MLPWeights, new_linear


class NemotronAdapter(DecoderAdapter):
    model_types = ("nemotron",)
    norm_kind = "layer"

    def get_mlp(self, layer: nn.Module) -> MLPWeights:
        mlp = layer.mlp
        return MLPWeights(
            up=mlp.up_proj.weight.data, down=mlp.down_proj.weight.data,
            up_bias=None if mlp.up_proj.bias is None else mlp.up_proj.bias.data,
            down_bias=None if mlp.down_proj.bias is None else mlp.down_proj.bias.data,
        )

    def set_mlp(self, layer: nn.Module, w: MLPWeights) -> None:
        mlp = layer.mlp
        mlp.up_proj = new_linear(w.up, w.up_bias)
        mlp.down_proj = new_linear(w.down, w.down_bias)
        mlp.intermediate_size = w.up.shape[0]
