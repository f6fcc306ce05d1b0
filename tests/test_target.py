"""Target resolution: the paper's shape from a budget, and refusals before any work."""

import pytest
from transformers import LlamaConfig

from minitron_deploy.errors import MinitronError
from minitron_deploy.shape import count_params
from minitron_deploy.target import TargetSpec, parse_layer_ranges, resolve_target
from tiny_models import tiny_config

LLAMA_8B = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)


def test_budget_reproduces_llama31_minitron_4b_width():
    r = resolve_target(LLAMA_8B, TargetSpec(target_params=4.6e9))
    assert (r.shape.hidden_size, r.shape.ffn_hidden_size, r.shape.num_heads) == (3072, 9216, 32)
    assert r.params_before == 8_030_261_248 and r.params_after <= 4.6e9


def test_fraction_budget_is_met_and_heads_pruned_last():
    r = resolve_target(LLAMA_8B, TargetSpec(target_params=0.5))
    assert r.params_after <= 0.5 * r.params_before
    assert r.shape.num_heads == 32 and r.shape.num_layers == 32
    small = resolve_target(LLAMA_8B, TargetSpec(target_params=0.3))
    assert small.shape.num_heads < 32 and "heads" in small.reason


def test_budget_shape_is_loadable_for_llama_head_rule():
    r = resolve_target(tiny_config("llama"), TargetSpec(target_params=0.6))
    assert r.shape.hidden_size % r.shape.num_heads == 0
    assert r.params_after == count_params(tiny_config("llama"), r.shape)


@pytest.mark.parametrize("spec, message", [
    (TargetSpec(hidden_size=64), "larger than the source"),
    (TargetSpec(ffn_hidden_size=0), "must be positive"),
    (TargetSpec(num_heads=5), "cannot be split evenly"),
    (TargetSpec(num_kv_heads=1, num_heads=6), "heads per group"),
    (TargetSpec(drop_layers=[2, 9]), "out of range"),
    (TargetSpec(drop_layers=[0, 1, 2, 3]), "every layer"),
    (TargetSpec(num_layers=2, drop_layers=[1]), "not both"),
    (TargetSpec(hidden_size=32), "transformers would refuse"),
    (TargetSpec(target_params=2e9), "not smaller"),
    (TargetSpec(target_params=10), "cannot be met by width"),
    (TargetSpec(), "no target"),
    (TargetSpec(hidden_size=48), "nothing to prune"),
])
def test_impossible_targets_refused(spec, message):
    with pytest.raises(MinitronError, match=message):
        resolve_target(tiny_config("llama"), spec)


def test_layer_ranges():
    assert parse_layer_ranges("16-18,3") == [3, 16, 17, 18]
    with pytest.raises(MinitronError):
        parse_layer_ranges("5-2")
