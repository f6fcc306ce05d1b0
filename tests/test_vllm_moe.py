"""vLLM serves pruned mixture-of-experts checkpoints (Qwen3-MoE, Mixtral, OLMoE and gpt-oss
with fewer, narrower experts) with transformers' greedy tokens on CPU, and ``bench`` times them
on the vLLM and hf backends while the torch fast path refuses them in one line. The vLLM tests
skip, saying why, when the vLLM environment (.ci/setup) is absent."""

import json

import pytest
import torch
from test_vllm import NEW_TOKENS, TEXTS, prompts, save, vllm_env  # noqa: F401  (a fixture)
from tiny_models import MOE_FAMILIES, random_model, tiny_config

from minitron_deploy.arch import get_adapter
from minitron_deploy.cli import main
from minitron_deploy.core.shape import ModelShape
from minitron_deploy.pruning.trim import KeepPlan, trim_model
from minitron_deploy.serve.parity import greedy_parity


def pruned_moe(family: str, seed: int = 0):
    """A tiny ``family`` model vLLM's CPU attention takes (hidden 192, 6 heads of head_dim 32
    over 2 KV groups), pruned to 4 of its 6 experts of 16 of their 24 neurons (seeded subsets,
    each expert its own) and without layer 2; norms randomized."""
    config = tiny_config(family, hidden_size=192)
    config.head_dim = 32
    model = random_model(config, seed)
    plan = KeepPlan.keep_all(ModelShape.from_config(config))
    plan.layers = [0, 1, 3]
    g = torch.Generator().manual_seed(seed + 1)
    for i in get_adapter(config).sparse_layers(config):
        plan.experts[i] = torch.randperm(6, generator=g)[:4].sort().values
        plan.expert_mlp[i] = torch.stack([torch.randperm(24, generator=g)[:16].sort().values
                                          for _ in range(4)])
    return trim_model(model, plan)


def pruned_gpt_oss(seed: int = 0):
    """A tiny gpt-oss vLLM's CPU expert kernels take (hidden and expert width in multiples of
    32, the released checkpoints' SwiGLU clamp of 7, which vLLM's kernel hard-codes), with
    sliding layers whose 6-token window the test sequences exceed, pruned to hidden 128 of 192,
    4 of 6 experts of 32 of 64 neurons, without layer 3 (sliding and full layers still
    alternate, as vLLM assumes); norms and biases randomized."""
    config = tiny_config("gpt_oss", hidden_size=192, intermediate_size=64, swiglu_limit=7.0)
    config.head_dim = 32
    model = random_model(config, seed)
    plan = KeepPlan.keep_all(ModelShape.from_config(config))
    plan.layers = [0, 1, 2]
    g = torch.Generator().manual_seed(seed + 1)
    plan.hidden = torch.randperm(192, generator=g)[:128].sort().values
    for i in get_adapter(config).sparse_layers(config):
        plan.experts[i] = torch.randperm(6, generator=g)[:4].sort().values
        plan.expert_mlp[i] = torch.stack([torch.randperm(64, generator=g)[:32].sort().values
                                          for _ in range(4)])
    return trim_model(model, plan)


FAMILIES = [*MOE_FAMILIES, "gpt_oss"]


@pytest.fixture(scope="module")
def parity(vllm_env, tmp_path_factory):  # noqa: F811
    """Every pruned MoE family through transformers and one vLLM engine process."""
    root = tmp_path_factory.mktemp("vllm-moe")
    dirs = {f: save(pruned_moe(f), root / f) for f in MOE_FAMILIES}
    dirs["gpt_oss"] = save(pruned_gpt_oss(), root / "gpt_oss")
    results, failed, engine = greedy_parity([str(d) for d in dirs.values()], prompts(),
                                            NEW_TOKENS, threads=1)
    return dirs, results, failed, engine


@pytest.mark.parametrize("family", FAMILIES)
def test_pruned_moe_gives_transformers_greedy_tokens(parity, family):
    dirs, results, failed, engine = parity
    assert engine["device"] == "cpu"
    config = json.loads((dirs[family] / "config.json").read_text())
    assert config["num_hidden_layers"] == 3
    if family == "gpt_oss":  # the window is exceeded: windowed layers are compared
        assert config["sliding_window"] < min(map(len, prompts())) + NEW_TOKENS
    model = str(dirs[family])
    assert model not in failed, f"vLLM could not run {family}: {failed.get(model)}"
    mine = [p for p in results if p.model == model]
    assert len(mine) == len(TEXTS) and all(len(p.hf_tokens) == NEW_TOKENS for p in mine)
    assert [p.vllm_tokens for p in mine] == [p.hf_tokens for p in mine]
    assert max(p.max_logprob_gap for p in mine) < 1e-4


def test_bench_times_moe_on_vllm_and_hf(vllm_env, tmp_path):  # noqa: F811
    model = save(pruned_moe("qwen3_moe"), tmp_path / "qwen3-moe")
    out = tmp_path / "report"
    rc = main(["bench", "--models", str(model), "--backend", "hf,vllm", "--isl", "8",
               "--osl", "4", "--batch-sizes", "2", "--reps", "1", "--dtype", "fp32",
               "--device", "cpu", "--no-plots", "--out", str(out)])
    assert rc == 0
    runs = json.loads((out / "bench.json").read_text())["runs"]
    assert sorted(r["backend"] for r in runs) == ["hf", "vllm"]
    for run in runs:
        assert all(t["output_tokens"] == 2 * 4 for t in run["repetitions"])
        assert run["metrics"]["itl_ms"] > 0


def test_bench_fast_path_refuses_moe_in_one_line(tmp_path, capsys):
    model = save(pruned_moe("mixtral"), tmp_path / "mixtral")
    capsys.readouterr()
    rc = main(["bench", "--models", str(model), "--backend", "torch", "--isl", "8", "--osl",
               "4", "--batch-sizes", "1", "--reps", "1", "--device", "cpu", "--no-plots",
               "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.split("\r")[-1]  # after the weight-loading progress bar
    assert rc == 2 and err.endswith("\n") and err.count("minitron: error:") == 1
    assert err.splitlines()[-1] == ("minitron: error: the torch fast path does not support "
                                    "mixture-of-experts MLPs (mixtral); use --backend hf")
    assert not (tmp_path / "out").exists()
