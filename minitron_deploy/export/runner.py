"""A pure-torch reader and runner of TensorRT-LLM checkpoints: the proof of an export where
TensorRT-LLM cannot be installed.

It reads ``config.json`` and every ``rank{i}.safetensors``, merges the shards and runs the
decoder the config describes, the way TensorRT-LLM interprets these fields (``rope_gpt_neox``
with ``rotary_base``/``rotary_scaling``/``rotary_pct``, RmsNorm or, for ``GPTForCausalLM``,
LayerNorm, ``silu`` / ``gelu_pytorch_tanh`` gated, ``swiglu`` fused or ``squared-relu`` MLPs,
qk layernorm, FP8 linears with per-tensor weight and activation scales; for the Gemma
architectures the sqrt(hidden_size) embedding scale, ``inter_layernorms``,
``query_pre_attn_scalar``, attention and final logit soft-capping, sliding layers repeating
``_sliding_window_pattern`` with ``rope_local_base_freq``). Everything computes in float32.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core.errors import MinitronError
from .fp8 import fake_quant
from .shard import merge_tensors

#: TensorRT-LLM's Gemma model scales the embeddings by sqrt(hidden_size) itself.
GEMMA_ARCHITECTURES = ("GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM")


@dataclass
class TrtllmCheckpoint:
    config: dict
    tensors: dict[str, torch.Tensor]

    @classmethod
    def load(cls, directory: str | Path) -> "TrtllmCheckpoint":
        """Read config.json and merge all ``rank{i}.safetensors`` shards."""
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise MinitronError(f"{directory} is not a TensorRT-LLM checkpoint (no config.json)")
        config = json.loads((directory / "config.json").read_text())
        tp = config["mapping"]["tp_size"]
        paths = [directory / f"rank{r}.safetensors" for r in range(tp)]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise MinitronError(f"{directory} lacks {', '.join(missing)} for tp_size {tp}")
        return cls(config, merge_tensors([load_file(str(p)) for p in paths], config))

    def linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """``x @ W.T + b``; FP8 weights dequantized, inputs quantized with their scale."""
        w = self.tensors[f"{name}.weight"]
        if w.dtype == torch.float8_e4m3fn:
            w = w.float() * self.tensors[f"{name}.weights_scaling_factor"]
            x = fake_quant(x, self.tensors[f"{name}.activation_scaling_factor"])
        bias = self.tensors.get(f"{name}.bias")
        return F.linear(x, w.float(), None if bias is None else bias.float())

    def norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        w = self.tensors[f"{name}.weight"].float()
        eps = self.config["norm_epsilon"]
        if self.config["architecture"] == "GPTForCausalLM":
            bias = self.tensors.get(f"{name}.bias")
            return F.layer_norm(x, w.shape, w, None if bias is None else bias.float(), eps)
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def is_sliding(self, layer: int) -> bool:
        pattern = self.config.get("_sliding_window_pattern")
        return bool(pattern) and (layer + 1) % pattern != 0

    def inv_freq(self, local: bool = False) -> torch.Tensor:
        """Rotary inverse frequencies, with TensorRT-LLM's linear / llama3 scaling (``local``:
        a sliding layer's, with ``rope_local_base_freq`` and no scaling where it is set)."""
        c = self.config
        dim = int(c["head_size"] * c.get("rotary_pct", 1.0))
        local = local and c.get("rope_local_base_freq") is not None
        base = c["rope_local_base_freq"] if local else c["rotary_base"]
        inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        scaling = {} if local else c.get("rotary_scaling") or {}
        kind = scaling.get("type", scaling.get("rope_type"))
        if kind == "linear":
            inv = inv / scaling["factor"]
        elif kind == "llama3":
            factor, low, high = scaling["factor"], scaling["low_freq_factor"], \
                scaling["high_freq_factor"]
            old = scaling["original_max_position_embeddings"]
            wavelen = 2 * math.pi / inv
            smooth = (old / wavelen - low) / (high - low)
            mid = (1 - smooth) * inv / factor + smooth * inv
            inv = torch.where(wavelen > old / low, inv / factor,
                              torch.where(wavelen < old / high, inv, mid))
        elif kind is not None:
            raise MinitronError(f"the reference runner does not implement rotary scaling {kind!r}")
        return inv.float()

    def rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        dim = cos.shape[-1]
        rot, passthrough = x[..., :dim], x[..., dim:]
        half = torch.cat([-rot[..., dim // 2:], rot[..., : dim // 2]], dim=-1)
        return torch.cat([rot * cos + half * sin, passthrough], dim=-1)

    def attention(self, x: torch.Tensor, prefix: str, cos, sin, window: int | None) -> torch.Tensor:
        c = self.config
        b, s, _ = x.shape
        heads, kv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_size"]
        q, k, v = self.linear(x, f"{prefix}.qkv").split([heads * hd, kv * hd, kv * hd], dim=-1)
        q, k, v = (t.view(b, s, -1, hd).transpose(1, 2) for t in (q, k, v))
        if f"{prefix}.q_layernorm.weight" in self.tensors:
            q, k = self.norm(q, f"{prefix}.q_layernorm"), self.norm(k, f"{prefix}.k_layernorm")
        q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
        k, v = k.repeat_interleave(heads // kv, dim=1), v.repeat_interleave(heads // kv, dim=1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(c.get("query_pre_attn_scalar") or hd)
        scores = softcap(scores, c.get("attn_logit_softcapping"))
        hidden = torch.ones(s, s, dtype=torch.bool).triu(1)
        if window:
            hidden |= torch.ones(s, s, dtype=torch.bool).tril(-window)
        probs = scores.masked_fill(hidden, float("-inf")).softmax(-1)
        return self.linear((probs @ v).transpose(1, 2).reshape(b, s, heads * hd),
                           f"{prefix}.dense")

    def mlp(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        act = self.config["hidden_act"]
        fc = self.linear(x, f"{prefix}.fc")
        if act == "silu":
            h = F.silu(fc) * self.linear(x, f"{prefix}.gate")
        elif act == "gelu_pytorch_tanh":
            h = F.gelu(fc, approximate="tanh") * self.linear(x, f"{prefix}.gate")
        elif act == "swiglu":
            up, gate = fc.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif act == "squared-relu":
            h = F.relu(fc).square()
        else:
            raise MinitronError(f"the reference runner does not implement hidden_act {act!r}")
        return self.linear(h, f"{prefix}.proj")

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Float32 logits ``[batch, seq, vocab]`` of a causal forward over ``input_ids``."""
        c = self.config
        x = self.tensors["transformer.vocab_embedding.weight"].float()[input_ids]
        if c["architecture"] in GEMMA_ARCHITECTURES:
            x = x * math.sqrt(c["hidden_size"])
        positions = torch.arange(input_ids.shape[1]).float()[:, None]
        rope = {}
        for local in (False, True):
            freqs = positions * self.inv_freq(local)[None]
            rope[local] = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
        inter = c.get("inter_layernorms", False)
        for i in range(c["num_hidden_layers"]):
            p, local = f"transformer.layers.{i}", self.is_sliding(i)
            h = self.attention(self.norm(x, f"{p}.input_layernorm"), f"{p}.attention",
                               *rope[local], c.get("sliding_window") if local else None)
            x = x + (self.norm(h, f"{p}.post_layernorm") if inter else h)
            h = self.mlp(self.norm(x, f"{p}.pre_feedforward_layernorm" if inter
                                   else f"{p}.post_layernorm"), f"{p}.mlp")
            x = x + (self.norm(h, f"{p}.post_feedforward_layernorm") if inter else h)
        x = self.norm(x, "transformer.ln_f")
        logits = self.linear(x, "lm_head")[..., : c["vocab_size"]]
        return softcap(logits, c.get("final_logit_softcapping"))


def softcap(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """``cap * tanh(x / cap)`` (TensorRT-LLM's attention ``max_attn_value`` and Gemma's logit
    soft-capping), or ``x`` when ``cap`` is unset."""
    return x if not cap else torch.tanh(x / cap) * cap
