"""MoEfication: a dense Llama-style checkpoint rewritten as a stock Mixtral checkpoint.

Each layer's MLP neurons are split into ``experts`` equal groups by balanced k-means on their
co-activation (each neuron's |act(gate) * up| over calibration tokens, unit-normalised, so
neurons that fire together share an expert). Expert ``e`` holds its neurons' gate/up rows and
down columns, the down columns scaled by ``top_k`` (Mixtral renormalises the top-k router
weights to sum to 1; at equal weights the output is then the sum of the chosen experts, as in
the dense MLP). The router is the least-squares fit of each token's centred log contribution
norm per expert (``||down_e act_e(x)||``) on the MLP input, so its softmax ranks experts by
how much they would add. With every expert routed, a zero router and the down columns
scaled by the expert count, the checkpoint reproduces the dense model (checked).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, MixtralConfig

from minitron_deploy.arch.modeling import save_checkpoint_atomic
from minitron_deploy.core.errors import MinitronError


def balanced_kmeans(points: torch.Tensor, k: int, iters: int = 8, seed: int = 0) -> torch.Tensor:
    """Cluster labels of ``points`` [n, d] into ``k`` clusters of exactly ``n / k`` points:
    Lloyd iterations whose assignment fills the nearest cluster with room, closest pairs
    first."""
    n = points.shape[0]
    if n % k:
        raise MinitronError(f"{n} neurons do not split into {k} equal experts")
    g = torch.Generator().manual_seed(seed)
    centroids = points[torch.randperm(n, generator=g)[:k]].clone()
    labels = torch.empty(n, dtype=torch.long)
    for _ in range(iters):
        order = torch.cdist(points, centroids).flatten().argsort().tolist()
        labels.fill_(-1)
        room = [n // k] * k
        for idx in order:
            p, c = divmod(idx, k)
            if labels[p] < 0 and room[c]:
                labels[p] = c
                room[c] -= 1
        centroids = torch.stack([points[labels == c].mean(0) for c in range(k)])
    return labels


@torch.no_grad()
def mlp_inputs(model, sequences: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's MLP input (after its norm) over ``sequences``, as ``[tokens, hidden]``."""
    seen: list[list[torch.Tensor]] = [[] for _ in model.model.layers]
    hooks = [layer.mlp.register_forward_pre_hook(
        lambda m, args, i=i: seen[i].append(args[0].reshape(-1, args[0].shape[-1])))
        for i, layer in enumerate(model.model.layers)]
    try:
        for batch in sequences.split(4):
            model(input_ids=batch, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat(x) for x in seen]


@torch.no_grad()
def split_layer(mlp, x: torch.Tensor, experts: int, top_k: int,
                seed: int) -> tuple[list[torch.Tensor], torch.Tensor, float]:
    """One dense MLP's neurons per expert (sorted indices), the fitted router [E, hidden] and
    the share of the oracle's top-k experts (largest contributions) the router picks."""
    act = mlp.act_fn(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)
    profile = act.abs().T
    profile = profile / profile.norm(dim=1, keepdim=True).clamp_min(1e-8)
    labels = balanced_kmeans(profile, experts, seed=seed)
    groups = [torch.nonzero(labels == e).flatten() for e in range(experts)]
    down = mlp.down_proj.weight
    norms = torch.stack([(act[:, idx] @ down[:, idx].T).norm(dim=1) for idx in groups], dim=1)
    target = norms.clamp_min(1e-6).log().double()
    target -= target.mean(dim=1, keepdim=True)
    router = torch.linalg.lstsq(x.double(), target).solution.T.float()
    oracle = torch.zeros_like(norms).scatter_(1, norms.topk(top_k, dim=1).indices, 1.0)
    picked = oracle.gather(1, (x @ router.T).topk(top_k, dim=1).indices)
    return groups, router, picked.mean().item()


def mixtral_config(dense_config, experts: int, top_k: int) -> MixtralConfig:
    """The Mixtral config of ``dense_config``'s shape with ``experts`` experts per layer."""
    c = dense_config
    ffn = c.intermediate_size // experts
    return MixtralConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=ffn,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        head_dim=getattr(c, "head_dim", c.hidden_size // c.num_attention_heads),
        max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.rms_norm_eps,
        rope_parameters=dict(c.rope_parameters), tie_word_embeddings=c.tie_word_embeddings,
        num_local_experts=experts, num_experts_per_tok=top_k, sliding_window=None,
        bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
        pad_token_id=getattr(c, "pad_token_id", None), hidden_act=c.hidden_act)


@torch.no_grad()
def build_mixtral(dense, groups: list[list[torch.Tensor]], routers: list[torch.Tensor],
                  top_k: int, scale: float):
    """The Mixtral model holding ``dense``'s weights, its MLPs split into ``groups``."""
    config = mixtral_config(dense.config, len(groups[0]), top_k)
    moe = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    state = {k: v for k, v in dense.state_dict().items() if ".mlp." not in k}
    missing, _ = moe.load_state_dict(state, strict=False)
    for i, (layer, dense_layer) in enumerate(zip(moe.model.layers, dense.model.layers)):
        mlp = dense_layer.mlp
        layer.mlp.gate.weight.copy_(routers[i])
        for e, idx in enumerate(groups[i]):
            layer.mlp.experts.gate_up_proj[e].copy_(torch.cat([mlp.gate_proj.weight[idx],
                                                               mlp.up_proj.weight[idx]]))
            layer.mlp.experts.down_proj[e].copy_(mlp.down_proj.weight[:, idx] * scale)
    left = [k for k in missing if ".mlp." not in k and k != "lm_head.weight"]
    if left:
        raise MinitronError(f"MoEfication left weights unset: {left[:3]}")
    moe.tie_weights()
    return moe


def moefy(dense_dir: Path, out_dir: Path, calib: torch.Tensor, experts: int = 8,
          top_k: int = 2, seed: int = 0) -> dict:
    """Write ``dense_dir`` (Llama-style, gated SiLU MLP) MoEfied to ``out_dir``; returns the
    check's max logit difference and each layer's router top-k agreement with the oracle
    (the experts whose contribution is largest) on the calibration tokens."""
    from transformers import AutoTokenizer

    dense = AutoModelForCausalLM.from_pretrained(str(dense_dir), dtype=torch.float32).eval()
    inputs = mlp_inputs(dense, calib)
    groups, routers, agreement = zip(*(split_layer(layer.mlp, x, experts, top_k, seed + i)
                            for i, (layer, x) in enumerate(zip(dense.model.layers, inputs))))
    probe = calib[:1, :32]
    every = build_mixtral(dense, groups, [torch.zeros_like(r) for r in routers], experts,
                          float(experts))
    gap = (every(input_ids=probe).logits - dense(input_ids=probe).logits).abs().max().item()
    if gap > 1e-3:
        raise MinitronError(f"MoEfied model with every expert differs from the dense one by {gap}")
    del every
    moe = build_mixtral(dense, groups, routers, top_k, float(top_k))
    tokenizer = AutoTokenizer.from_pretrained(str(dense_dir))
    save_checkpoint_atomic(moe, out_dir, write_extra=tokenizer.save_pretrained)
    return {"all_experts_max_logit_diff": gap, "experts": experts, "top_k": top_k,
            "expert_width": dense.config.intermediate_size // experts,
            "router_oracle_agreement": [round(a, 4) for a in agreement]}
