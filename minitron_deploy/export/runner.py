"""A pure-torch reader and runner of TensorRT-LLM checkpoints: the proof of an export where
TensorRT-LLM cannot be installed.

It reads ``config.json`` and every ``rank{i}.safetensors``, merges the shards and runs the
decoder the config describes, the way TensorRT-LLM interprets these fields (``rope_gpt_neox``
with ``rotary_base``/``rotary_scaling``/``rotary_pct``, RmsNorm or, for ``GPTForCausalLM``,
LayerNorm, ``silu`` gated / ``swiglu`` fused / ``squared-relu`` MLPs, qk layernorm, FP8 linears
with per-tensor weight and activation scales). Everything computes in float32.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import MinitronError
from .fp8 import fake_quant
from .shard import merge_tensors


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

    def inv_freq(self) -> torch.Tensor:
        """Rotary inverse frequencies, with TensorRT-LLM's linear / llama3 scaling."""
        c = self.config
        dim = int(c["head_size"] * c.get("rotary_pct", 1.0))
        inv = 1.0 / (c["rotary_base"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        scaling = c.get("rotary_scaling") or {}
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

    def attention(self, x: torch.Tensor, prefix: str, cos, sin) -> torch.Tensor:
        c = self.config
        b, s, _ = x.shape
        heads, kv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_size"]
        q, k, v = self.linear(x, f"{prefix}.qkv").split([heads * hd, kv * hd, kv * hd], dim=-1)
        q, k, v = (t.view(b, s, -1, hd).transpose(1, 2) for t in (q, k, v))
        if f"{prefix}.q_layernorm.weight" in self.tensors:
            q, k = self.norm(q, f"{prefix}.q_layernorm"), self.norm(k, f"{prefix}.k_layernorm")
        q, k = self.rope(q, cos, sin), self.rope(k, cos, sin)
        k, v = k.repeat_interleave(heads // kv, dim=1), v.repeat_interleave(heads // kv, dim=1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        causal = torch.ones(s, s, dtype=torch.bool).triu(1)
        probs = scores.masked_fill(causal, float("-inf")).softmax(-1)
        return self.linear((probs @ v).transpose(1, 2).reshape(b, s, heads * hd),
                           f"{prefix}.dense")

    def mlp(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        act = self.config["hidden_act"]
        fc = self.linear(x, f"{prefix}.fc")
        if act == "silu":
            h = F.silu(fc) * self.linear(x, f"{prefix}.gate")
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
        freqs = torch.arange(input_ids.shape[1]).float()[:, None] * self.inv_freq()[None]
        cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
        for i in range(c["num_hidden_layers"]):
            p = f"transformer.layers.{i}"
            x = x + self.attention(self.norm(x, f"{p}.input_layernorm"), f"{p}.attention", cos, sin)
            x = x + self.mlp(self.norm(x, f"{p}.post_layernorm"), f"{p}.mlp")
        x = self.norm(x, "transformer.ln_f")
        return self.linear(x, "lm_head")[..., : c["vocab_size"]]
