"""Hub ids (``org/name[@rev]``) resolved through a local Hugging Face cache, never the network."""

import json

import pytest
from huggingface_hub import constants
from tiny_models import CALIB_TEXT, save_tiny_checkpoint

from minitron_deploy.arch.modeling import check_output_dir, load_config
from minitron_deploy.cli import main
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.core.hub import resolve_model

MAIN, TAGGED = "a" * 40, "b" * 40
PRUNE_ARGS = ["--calib-samples", "8", "--seq-len", "32", "--batch-size", "4",
              "--ffn-hidden-size", "32"]


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A hub cache holding org/tiny: 4 layers on main, 3 layers at tag v1."""
    cache = tmp_path_factory.mktemp("hf") / "hub"
    repo = cache / "models--org--tiny"
    save_tiny_checkpoint("llama", repo / "snapshots" / MAIN)
    save_tiny_checkpoint("llama", repo / "snapshots" / TAGGED, num_hidden_layers=3)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(MAIN)
    (repo / "refs" / "v1").write_text(TAGGED)
    return cache


@pytest.fixture
def offline(hub_cache, monkeypatch, tmp_path):
    """Offline, with ``hub_cache`` as the Hugging Face cache and an empty working directory."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "calib.txt").write_text(CALIB_TEXT)
    return hub_cache


def test_prune_takes_a_hub_id_offline(offline, tmp_path):
    assert main(["prune", "--model", "org/tiny", "--calib", "calib.txt", "--out", "out",
                 *PRUNE_ARGS]) == 0
    record = json.loads((tmp_path / "out" / "minitron" / "minitron.json").read_text())
    snapshot = offline / "models--org--tiny" / "snapshots" / MAIN
    assert record["source"] == str(snapshot.resolve())
    assert (tmp_path / "out" / "tokenizer.json").is_file()  # copied from the snapshot


def test_revisions_resolve_to_their_snapshot(offline):
    snapshots = offline.resolve() / "models--org--tiny" / "snapshots"
    assert resolve_model("org/tiny@v1") == snapshots / TAGGED
    assert resolve_model(f"org/tiny@{MAIN}") == snapshots / MAIN
    assert load_config("org/tiny@v1").num_hidden_layers == 3
    assert load_config("org/tiny").num_hidden_layers == 4


def test_local_folder_wins_over_hub_id(offline, tmp_path):
    save_tiny_checkpoint("llama", tmp_path / "org" / "tiny", num_hidden_layers=2)
    assert resolve_model("org/tiny") == tmp_path.joinpath("org", "tiny").relative_to(tmp_path)
    assert load_config("org/tiny").num_hidden_layers == 2


@pytest.mark.parametrize("spec", ["org/missing", "org/tiny@v9"])
def test_uncached_hub_id_is_one_line_error(offline, capsys, spec):
    rc = main(["prune", "--model", spec, "--calib", "calib.txt", "--out", "out", *PRUNE_ARGS])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == (f"minitron: error: model {spec} is neither a local folder nor in "
                               "the Hugging Face cache (offline)")


def test_outputs_never_go_into_the_cache(offline):
    snapshot = offline / "models--org--tiny" / "snapshots" / MAIN
    with pytest.raises(MinitronError, match="inside the input model org/tiny"):
        check_output_dir(snapshot / "pruned", "org/tiny")
    with pytest.raises(MinitronError, match="inside the Hugging Face cache"):
        check_output_dir(offline / "pruned", "org/tiny")


def test_serve_gives_vllm_the_cached_folder(offline):
    from minitron_deploy.serve.server import (
        ServeSettings,
        check_settings,
        server_command,
    )

    settings = ServeSettings("org/tiny@v1", port=0)
    assert check_settings(settings).num_hidden_layers == 3
    cmd = server_command(settings, "python")
    snapshot = offline.resolve() / "models--org--tiny" / "snapshots" / TAGGED
    assert cmd[cmd.index("--model") + 1] == str(snapshot)
    assert cmd[cmd.index("--served-model-name") + 1] == "tiny"
