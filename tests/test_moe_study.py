"""The MoE pruning study's parts (benchmarks/moe): MoEfication is exact with every expert
routed and its router picks the largest experts more often than chance; pruning by every
expert criterion writes a checkpoint (frequency scores once shared storage with the loads,
which safetensors refuses to write) keeping the experts its scores rank first."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import CALIB_TEXT, save_tiny_checkpoint, tiny_batch
from transformers import AutoModelForCausalLM

from minitron_deploy.pruning.api import prune

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "moe"))
import moefy


def test_balanced_kmeans_makes_equal_clusters_of_close_points():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.1 * torch.randn(4, 2, generator=g) for c in centres])
    labels = moefy.balanced_kmeans(points, 3)
    assert torch.bincount(labels).tolist() == [4, 4, 4]
    assert all(len(set(labels[i:i + 4].tolist())) == 1 for i in range(0, 12, 4))


def test_moefied_checkpoint_is_exact_with_every_expert_and_routes_better_than_chance(tmp_path):
    save_tiny_checkpoint("llama_tied", tmp_path / "dense")
    info = moefy.moefy(tmp_path / "dense", tmp_path / "moe", tiny_batch(4, 64), experts=5,
                       top_k=2)
    assert info["all_experts_max_logit_diff"] < 1e-5 and info["expert_width"] == 16
    # top-2 of 5 at random overlaps the oracle's top-2 on 40% of picks
    assert sum(info["router_oracle_agreement"]) / 4 > 0.5
    moe = AutoModelForCausalLM.from_pretrained(str(tmp_path / "moe"))
    assert type(moe).__name__ == "MixtralForCausalLM" and moe.config.num_experts_per_tok == 2
    assert (tmp_path / "moe" / "tokenizer.json").is_file()


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe-study")
    save_tiny_checkpoint("qwen3_moe", root / "moe")
    (root / "calib.txt").write_text(CALIB_TEXT)
    return root


@pytest.mark.parametrize("criterion", ["reap", "frequency", "random"])
def test_prune_by_each_expert_criterion_keeps_its_top_experts(tiny_moe, criterion):
    out = tiny_moe / criterion
    prune(tiny_moe / "moe", out, calib=tiny_moe / "calib.txt", calib_samples=4, seq_len=32,
          batch_size=4, num_experts=4, expert_criterion=criterion, device="cpu", dtype="fp32")
    kept = json.loads((out / "minitron" / "minitron.json").read_text())["kept"]["experts"]
    scores = load_file(str(out / "minitron" / "importance.safetensors"))
    for layer, experts in kept.items():
        top = scores[f"experts.{layer}"].topk(4).indices.sort().values
        assert experts == top.tolist()
    if criterion == "frequency":
        for layer in kept:
            assert torch.equal(scores[f"experts.{layer}"], scores[f"expert_load.{layer}"])
