"""Target resolution: the paper's shape from a budget, and refusals before any work."""

import warnings

import pytest
from tiny_models import tiny_config
from transformers import LlamaConfig

from minitron_deploy.core.align import Alignment
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.core.shape import ModelShape, count_params
from minitron_deploy.pruning.target import (
    TargetSpec,
    parse_layer_ranges,
    resolve_target,
)

LLAMA_8B = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)
SMOLLM2_135M = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                           num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                           tie_word_embeddings=True)


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


@pytest.mark.parametrize("values, message", [
    (dict(hidden_size=64), "larger than the source"),
    (dict(ffn_hidden_size=0), "must be positive"),
    (dict(num_heads=5), "cannot be split evenly"),
    (dict(num_kv_heads=1, num_heads=6), "heads per group"),
    (dict(drop_layers=[2, 9]), "out of range"),
    (dict(drop_layers=[0, 1, 2, 3]), "every layer"),
    (dict(num_layers=2, drop_layers=[1]), "not both"),
    (dict(hidden_size=32), "transformers would refuse"),
    (dict(target_params=2e9), "not smaller"),
    (dict(target_params=10), "cannot be met by width"),
    (dict(), "no target"),
    (dict(hidden_size=48), "nothing to prune"),
])
def test_impossible_targets_refused(values, message):
    """Refused when the request is made (a bad value) or resolved against the source."""
    with pytest.raises(MinitronError, match=message):
        resolve_target(tiny_config("llama"), TargetSpec(**values))


def test_budget_sizes_are_kernel_aligned():
    """Llama needs hidden % heads == 0, so 9 heads allow no hidden size below 576 that is a
    multiple of 64: the rule prunes heads (as few as it can) rather than misalign."""
    r = resolve_target(SMOLLM2_135M, TargetSpec(target_params=0.5))
    assert r.shape.hidden_size % 64 == 0 and r.shape.ffn_hidden_size % 64 == 0
    assert r.params_after <= 0.5 * r.params_before and r.align == Alignment(64, 64, 1)
    assert r.shape.num_heads == 6 and "heads pruned to 2 per KV group" in r.reason
    off = resolve_target(SMOLLM2_135M, TargetSpec(target_params=0.5, align=Alignment(1, 1)))
    assert (off.shape.hidden_size, off.shape.ffn_hidden_size, off.shape.num_heads) == (378, 896, 9)


def test_tiny_sources_fall_back_to_the_power_of_two_they_allow():
    tiny = ModelShape.from_config(tiny_config("qwen3"))  # hidden 48, FFN 80
    assert Alignment().for_source(tiny) == Alignment(16, 16, 1)
    assert Alignment(128, 96, 4).for_source(ModelShape(576, 1536, 9, 3, 30, 64)) == \
        Alignment(64, 96, 1)
    for family in ("llama", "qwen3", "phi3", "nemotron"):
        r = resolve_target(tiny_config(family), TargetSpec(target_params=0.6))
        assert r.align == Alignment(16, 16, 1) and not r.align.unaligned(r.shape), family


def test_explicit_unaligned_shape_warns_once():
    with pytest.warns(UserWarning, match="Marlin") as caught:
        r = resolve_target(SMOLLM2_135M, TargetSpec(hidden_size=378, ffn_hidden_size=900))
    assert len(caught) == 1 and "hidden_size=378, ffn_hidden_size=900" in str(caught[0].message)
    assert r.shape.hidden_size == 378
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_target(SMOLLM2_135M, TargetSpec(ffn_hidden_size=896, num_layers=28))


@pytest.mark.parametrize("text, message", [("64", "HIDDEN,FFN"), ("a,b", "HIDDEN,FFN"),
                                           ("64,0", "positive")])
def test_bad_alignment_refused(text, message):
    with pytest.raises(MinitronError, match=message):
        Alignment.parse(text)


def test_layer_ranges():
    assert parse_layer_ranges("16-18,3") == [3, 16, 17, 18]
    with pytest.raises(MinitronError):
        parse_layer_ranges("5-2")


def test_summary_names_only_the_axes_the_shape_changes():
    """The shape summary is read off the chosen shape: a budget met by the MLP alone does not
    claim the hidden size was pruned; one that shrinks both says both."""
    mlp_only = resolve_target(tiny_config("llama"), TargetSpec(target_params=0.9))
    assert mlp_only.shape.hidden_size == 48 and mlp_only.shape.ffn_hidden_size < 80
    assert mlp_only.reason.startswith("MLP pruned (hidden and heads kept)")
    both = resolve_target(LLAMA_8B, TargetSpec(target_params=0.5))
    assert both.reason.startswith("MLP and hidden pruned (heads kept)")
    explicit = resolve_target(LLAMA_8B, TargetSpec(num_heads=16, drop_layers=[30, 31]))
    assert explicit.reason == "explicit target shape: heads and depth pruned (MLP and hidden kept)"
