"""Tensor-parallel sharding of a TensorRT-LLM checkpoint, and its exact inverse.

TensorRT-LLM's layout: ``attention.qkv`` is split per head within q, k and v and re-joined as
[q_r; k_r; v_r]; column-parallel linears (``mlp.fc``, ``mlp.gate``, ``lm_head``) split their
output rows (Phi-3's fused [up; gate] per half; ``lm_head`` padded to a multiple of tp);
row-parallel ones (``attention.dense``, ``mlp.proj``) split their input columns; per-row FP8
scales (``per_channel_scale``) split as their rows do; norms, embeddings, biases of
row-parallel linears and per-tensor FP8 scales are replicated.
"""

from __future__ import annotations

import torch

from ..core.errors import MinitronError


def _rule(name: str) -> str:
    if name.startswith("lm_head."):
        return "vocab"
    if ".attention.qkv." in name and not name.endswith("scaling_factor"):
        return "qkv"
    if name.endswith(("mlp.fc.weight", "mlp.fc.bias", "mlp.gate.weight", "mlp.gate.bias",
                      "mlp.fc.per_channel_scale", "mlp.gate.per_channel_scale")):
        return "rows"
    if name.endswith(("attention.dense.weight", "mlp.proj.weight")):
        return "cols"
    return "replicate"


def _qkv_sizes(config: dict) -> list[int]:
    head = config["head_size"]
    kv = config["num_key_value_heads"] * head
    return [config["num_attention_heads"] * head, kv, kv]


def _halves(config: dict) -> int:
    """Row blocks of ``mlp.fc`` that are split separately (2 for Phi-3's fused swiglu)."""
    return 2 if config["hidden_act"] == "swiglu" else 1


def check_tp(config: dict, tp: int) -> None:
    """Refuse a tensor-parallel degree the shapes cannot be split by."""
    if tp < 1:
        raise MinitronError(f"--tp must be at least 1, got {tp}")
    for what, n in (("num_attention_heads", config["num_attention_heads"]),
                    ("num_key_value_heads", config["num_key_value_heads"]),
                    ("intermediate_size", config["intermediate_size"])):
        if n % tp:
            raise MinitronError(f"--tp {tp} does not divide {what}={n}")


def split_tensors(tensors: dict[str, torch.Tensor], config: dict, tp: int
                  ) -> list[dict[str, torch.Tensor]]:
    """The ``tp`` rank shards of a full checkpoint."""
    check_tp(config, tp)
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(tp)]
    for name, t in tensors.items():
        rule = _rule(name)
        if rule == "replicate":
            pieces = [t] * tp
        elif rule == "cols":
            pieces = list(t.chunk(tp, dim=1))
        elif rule == "vocab":
            padded = -(-t.shape[0] // tp) * tp
            pad = t.new_zeros((padded - t.shape[0], *t.shape[1:]))
            pieces = list(torch.cat([t, pad]).chunk(tp, dim=0))
        else:
            sizes = _qkv_sizes(config) if rule == "qkv" else \
                [t.shape[0] // _halves(config)] * _halves(config)
            blocks = [b.chunk(tp, dim=0) for b in t.split(sizes, dim=0)]
            pieces = [torch.cat([b[r] for b in blocks]) for r in range(tp)]
        for r, piece in enumerate(pieces):
            shards[r][name] = piece.contiguous().clone()
    return shards


def merge_tensors(shards: list[dict[str, torch.Tensor]], config: dict
                  ) -> dict[str, torch.Tensor]:
    """The full checkpoint back from its rank shards (inverse of :func:`split_tensors`)."""
    tp = len(shards)
    merged = {}
    for name in shards[0]:
        pieces = [s[name] for s in shards]
        rule = _rule(name)
        if rule == "replicate":
            merged[name] = pieces[0]
        elif rule == "cols":
            merged[name] = torch.cat(pieces, dim=1)
        elif rule == "vocab":
            merged[name] = torch.cat(pieces)[: config["vocab_size"]]
        else:
            full = _qkv_sizes(config) if rule == "qkv" else \
                [pieces[0].shape[0] * tp // _halves(config)] * _halves(config)
            per_rank = [n // tp for n in full]
            split = [p.split(per_rank, dim=0) for p in pieces]
            merged[name] = torch.cat([split[r][b] for b in range(len(full)) for r in range(tp)])
    return merged
