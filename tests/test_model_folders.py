"""Every model folder we write holds at its top level only what loaders expect (serving engines
load every top-level ``*.safetensors``); our own files live in its ``minitron/`` subfolder."""

import fnmatch

import pytest
from tiny_models import CALIB_TEXT, save_tiny_checkpoint
from transformers import AutoModelForCausalLM

from minitron_deploy.distill.api import DistillConfig, distill
from minitron_deploy.distill.losses import read_pruning_record
from minitron_deploy.export import export, verify_manifest
from minitron_deploy.pruning.api import prune
from minitron_deploy.pruning.target import TargetSpec

LOADER_FILES = ("config.json", "generation_config.json", "model.safetensors",
                "model-*-of-*.safetensors", "model.safetensors.index.json", "tokenizer.json",
                "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja",
                "chat_template.json")


def top_level_is_loader_only(folder) -> set[str]:
    """Assert the whitelist; returns the names in ``minitron/``."""
    for entry in folder.iterdir():
        if entry.is_dir():
            assert entry.name == "minitron", entry
        else:
            assert any(fnmatch.fnmatch(entry.name, p) for p in LOADER_FILES), entry.name
    AutoModelForCausalLM.from_pretrained(str(folder))
    return {p.name for p in (folder / "minitron").iterdir()}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    save_tiny_checkpoint("llama", root / "teacher")
    (root / "text.txt").write_text(CALIB_TEXT)
    prune(root / "teacher", root / "pruned", TargetSpec(ffn_hidden_size=48, num_layers=3),
          calib=root / "text.txt", calib_samples=4, seq_len=16, batch_size=2)
    distill(root / "teacher", root / "pruned", root / "text.txt", root / "distilled",
            DistillConfig(steps=2, seq_len=16, batch_size=2, checkpoint_every=2))
    export(root / "distilled", root / "export", format="hf", dtype="fp32")
    return root


def test_prune_folder(folders):
    assert top_level_is_loader_only(folders / "pruned") == {
        "minitron.json", "importance.safetensors", "importance.json"}
    assert read_pruning_record(folders / "pruned")["target_shape"]["ffn_hidden_size"] == 48


def test_scores_reused_from_a_pruned_folder(folders, tmp_path):
    prune(folders / "teacher", tmp_path / "again", TargetSpec(ffn_hidden_size=48, num_layers=3),
          scores=folders / "pruned")
    assert read_pruning_record(tmp_path / "again")["kept"] == \
        read_pruning_record(folders / "pruned")["kept"]


def test_distill_folder(folders):
    assert top_level_is_loader_only(folders / "distilled") == {
        "distill.json", "train_log.jsonl", "loss_curve.png"}


def test_export_hf_folder(folders):
    assert top_level_is_loader_only(folders / "export") == {"export_manifest.json"}
    assert verify_manifest(folders / "export")["format"] == "hf"


def test_old_top_level_pruning_record_is_still_read(folders, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    (old / "minitron.json").write_text((folders / "pruned" / "minitron" / "minitron.json")
                                       .read_text())
    assert read_pruning_record(old) == read_pruning_record(folders / "pruned")
