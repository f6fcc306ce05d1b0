"""``minitron compress``: packaged recipes resolve to the paper's shapes; dry-run refusals."""

import json

import pytest

from minitron_deploy.cli import main
from minitron_deploy.commands.compress import parse_overrides
from minitron_deploy.errors import MinitronError
from minitron_deploy.recipe import load_recipe, packaged_recipe

LLAMA31_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
              "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
              "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
              "rope_theta": 500000.0, "rope_scaling": {
                  "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}


@pytest.fixture(scope="module")
def llama_config_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama31-8b")
    (path / "config.json").write_text(json.dumps(LLAMA31_8B))
    return path


@pytest.mark.parametrize("name", ["demo", "llama31-8b-to-4b-width", "llama31-8b-to-4b-depth",
                                  "llama31-8b-iterative"])
def test_packaged_recipes_validate(name):
    assert load_recipe(packaged_recipe(name)).rounds()


@pytest.mark.parametrize("name,expect", [
    ("llama31-8b-to-4b-width", "hidden_size=3072, ffn_hidden_size=9216, num_heads=32"),
    ("llama31-8b-to-4b-depth", "num_layers=16"),
    ("llama31-8b-iterative", "round 2 prune")])
def test_dry_run_resolves_paper_shapes_and_refuses_small_devices(llama_config_dir, capsys,
                                                                 tmp_path, name, expect):
    args = ["compress", "--recipe", str(packaged_recipe(name)), "--dry-run",
            "--work-dir", str(tmp_path), "--set", f"teacher={llama_config_dir}"]
    assert main([*args, "--device-memory-gb", "640"]) == 0
    out = capsys.readouterr().out
    assert expect in out and "est. memory" in out
    assert main([*args, "--device-memory-gb", "80"]) == 2  # one H100: the distill stage won't fit
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "distill needs about" in err
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_overrides_parse_as_yaml():
    assert parse_overrides(["distill.tokens=2.0e+6", "device=cuda"]) == {
        "distill.tokens": 2e6, "device": "cuda"}
    recipe = load_recipe(packaged_recipe("demo"), parse_overrides(["distill.tokens=2e6"]))
    assert recipe.distill.tokens == 2_000_000  # YAML reads 2e6 as a string; the schema coerces
    with pytest.raises(MinitronError, match="KEY=VALUE"):
        parse_overrides(["tokens"])
