"""``minitron compress``: packaged recipes resolve to the paper's shapes; dry-run refusals."""

import json

import pytest

from minitron_deploy.cli import main
from minitron_deploy.commands.compress import parse_overrides
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.pipeline.recipe import load_recipe, packaged_recipe

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


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """Offline, an empty Hugging Face cache, and an empty working directory ``tmp_path/cwd``."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path / "cwd")
    return cache


def _width_dry_run(work, *extra: str) -> list[str]:
    return ["compress", "--recipe", str(packaged_recipe("llama31-8b-to-4b-width")), "--dry-run",
            "--gpus", "8", "--device-memory-gb", "80", "--work-dir", str(work), *extra]


def test_dry_run_plans_from_a_named_shape_with_nothing_downloaded(offline_cache,
                                                                  llama_config_dir, capsys,
                                                                  tmp_path):
    work = tmp_path / "work"
    assert main(_width_dry_run(work, "--set", "teacher=llama31-8b")) == 0
    named = capsys.readouterr().out
    assert "* fsdp, teacher replicated" in named and "num_layers=32" in named
    # the same plan as from Llama-3.1-8B's own config.json
    assert main(_width_dry_run(work, "--set", f"teacher={llama_config_dir}")) == 0
    assert capsys.readouterr().out == named
    assert not work.exists() and not any(offline_cache.iterdir())
    assert not any((tmp_path / "cwd").iterdir())


def test_a_named_shape_teacher_is_refused_outside_a_dry_run(capsys, tmp_path):
    work = tmp_path / "work"
    assert main(["compress", "--recipe", str(packaged_recipe("llama31-8b-to-4b-width")),
                 "--work-dir", str(work), "--set", "teacher=llama31-8b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minitron: error: teacher llama31-8b is a named shape without "
                          "weights") and err.count("\n") == 1
    assert not work.exists()


def test_hub_teacher_missing_from_the_cache_suggests_the_named_shape(offline_cache, capsys,
                                                                     tmp_path):
    assert main(_width_dry_run(tmp_path / "work")) == 2
    assert capsys.readouterr().err == (
        "minitron: error: model meta-llama/Llama-3.1-8B is neither a local folder nor in the "
        "Hugging Face cache (offline); for a dry run without it: --set teacher=llama31-8b\n")


def test_hub_teacher_dry_run_needs_only_its_cached_config(offline_cache, capsys, tmp_path):
    repo = offline_cache / "models--meta-llama--Llama-3.1-8B"
    (repo / "snapshots" / ("c" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("c" * 40) / "config.json").write_text(json.dumps(LLAMA31_8B))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c" * 40)
    assert main(_width_dry_run(tmp_path / "work")) == 0
    assert "* fsdp, teacher replicated" in capsys.readouterr().out


def test_hub_teacher_dry_run_fetches_only_its_config(offline_cache, capsys, tmp_path,
                                                      monkeypatch):
    """Online, a dry run asks the Hub for config.json alone, not the 16 GB of weights."""
    import huggingface_hub
    from huggingface_hub import constants

    from minitron_deploy.core import hub

    asked = []

    def snapshot_download(repo, **kwargs):
        asked.append((repo, kwargs.get("allow_patterns")))
        folder = offline_cache / "snapshot"
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text(json.dumps(LLAMA31_8B))
        return str(folder)

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    hub._snapshot.cache_clear()
    try:
        assert main(_width_dry_run(tmp_path / "work")) == 0
    finally:
        hub._snapshot.cache_clear()
    assert asked == [("meta-llama/Llama-3.1-8B", ["config.json"])]
    assert "* fsdp, teacher replicated" in capsys.readouterr().out


def test_compress_killed_mid_distillation_resumes_to_the_same_model(tmp_path):
    """SIGKILL ``minitron compress`` once the distill stage has a checkpoint, re-run: the final
    student is bitwise the one of an uninterrupted run, and the prune stage is not redone."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tiny_models import CALIB_TEXT, save_tiny_checkpoint

    from minitron_deploy.core.files import sha256_file

    save_tiny_checkpoint("llama", tmp_path / "teacher")
    (tmp_path / "train.txt").write_text(CALIB_TEXT)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
name: kill
teacher: {tmp_path / 'teacher'}
data: {tmp_path / 'train.txt'}
heldout: {tmp_path / 'train.txt'}
prune: {{ffn_hidden_size: 48, calib_samples: 8, seq_len: 32, batch_size: 4}}
distill: {{steps: 24, seq_len: 32, batch_size: 4, lr: 3.0e-3, checkpoint_every: 4,
           precision: fp32}}
eval: {{tasks: [ppl], seq_len: 32, ppl_seqs: 2}}
""")
    cmd = [sys.executable, "-m", "minitron_deploy.cli", "compress", "--recipe", str(recipe)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*cmd, "--work-dir", str(tmp_path / "straight")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-1500:]

    work = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, "--work-dir", str(work)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = work / ".distilled.partial" / "student" / "latest"
    deadline = time.time() + 240
    while not (latest.is_file() and latest.read_text() >= "step-00000008"):
        assert proc.poll() is None and time.time() < deadline, "run ended before the kill"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (work / "distilled").exists() and (work / "prune.manifest.json").is_file()
    pruned_stamp = (work / "pruned" / "model.safetensors").stat().st_mtime_ns
    done = subprocess.run([*cmd, "--work-dir", str(work)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-1500:]
    assert "[prune] up to date, skipped" in done.stdout
    assert (work / "pruned" / "model.safetensors").stat().st_mtime_ns == pruned_stamp
    assert sha256_file(work / "distilled" / "model.safetensors") == \
        sha256_file(tmp_path / "straight" / "distilled" / "model.safetensors")
    log = lambda p: [json.loads(x)["loss"] for x in  # noqa: E731
                     (p / "distilled" / "minitron" / "train_log.jsonl").read_text().splitlines()]
    assert log(work) == log(tmp_path / "straight")
