"""A recipe's ``quantize`` section: the distilled student quantized into ``<work>/quantized``,
evaluated beside the others and reported; a re-run reuses it, a changed scheme redoes it."""

import json

import pytest
from recipe_inputs import fresh_ppl, tiny_recipe_header
from test_compress import LLAMA31_8B

from minitron_deploy.cli import main
from minitron_deploy.core.errors import MinitronError
from minitron_deploy.pipeline.recipe import load_recipe, packaged_recipe
from minitron_deploy.pipeline.run import build_stages, quantized_eval_note, run_pipeline

pytest.importorskip("compressed_tensors")


@pytest.fixture
def tiny_recipe(tmp_path):
    recipe_file = tmp_path / "tiny.yaml"
    recipe_file.write_text(tiny_recipe_header(tmp_path, "tiny") + f"""
prune: {{target_params: 0.6, calib_samples: 8, seq_len: 32, batch_size: 4}}
distill: {{steps: 3, seq_len: 32, batch_size: 4, lr: 3.0e-3}}
eval: {{tasks: [ppl], seq_len: 32, ppl_seqs: 4}}
quantize: {{scheme: int8-w8a8}}
""")
    return recipe_file


def _stamps(work) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in work.glob("*.manifest.json")}


def test_quantize_stage_runs_is_evaluated_reported_and_reused(tiny_recipe, capsys):
    held, work = tiny_recipe.parent / "held.txt", tiny_recipe.parent / "work"
    first = run_pipeline(load_recipe(tiny_recipe), work)
    quantized = work / "quantized"
    assert first.quantized == quantized
    config = json.loads((quantized / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert set(first.results) == {"teacher", "pruned", "distilled", "quantized"}
    assert first.results["quantized"]["ppl"] == pytest.approx(fresh_ppl(quantized, held),
                                                              rel=1e-6)
    assert first.results["quantized"]["ppl"] != first.results["distilled"]["ppl"]
    report = json.loads((work / "report.json").read_text())
    assert report["quantized"]["scheme"] == "int8-w8a8"
    assert report["quantized"]["weight_bytes"]["after"] < report["quantized"]["weight_bytes"][
        "before"]
    assert "quantized" in report["retention"]
    table = (work / "report.md").read_text()
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]
    assert rows == ["model", "teacher", "pruned", "distilled", "quantized"]
    assert "quantized: int8-w8a8 (compressed-tensors)" in table

    stamps = _stamps(work)
    assert "quantize.manifest.json" in stamps
    capsys.readouterr()
    run_pipeline(load_recipe(tiny_recipe), work)
    out = capsys.readouterr().out
    assert _stamps(work) == stamps
    assert out.count("up to date, skipped") == len(stamps) == 4  # prune, distill, quantize, eval

    # another scheme redoes quantize and eval only
    third = run_pipeline(load_recipe(tiny_recipe, {"quantize.scheme": "fp8"}), work)
    changed = {name for name, stamp in _stamps(work).items() if stamps[name] != stamp}
    assert changed == {"quantize.manifest.json", "eval.manifest.json"}
    record = json.loads((quantized / "minitron" / "quantize.json").read_text())
    assert record["scheme"] == "fp8"
    assert third.results["quantized"]["ppl"] == pytest.approx(fresh_ppl(quantized, held),
                                                              rel=1e-6)
    assert third.results["distilled"] == first.results["distilled"]


def test_formats_eval_cannot_load_are_left_out_with_a_note(tiny_recipe, tmp_path):
    for scheme, fmt in (("gguf-q8_0", None), ("gguf-q4_0", None), ("fp8", "modelopt")):
        loaded = load_recipe(tiny_recipe, {"quantize.scheme": scheme, "quantize.format": fmt})
        assert quantized_eval_note(loaded) is None  # evaluate() reads GGUF and ModelOpt FP8
    recipe = load_recipe(tiny_recipe, {"quantize.scheme": "nvfp4"})
    note = quantized_eval_note(recipe)
    assert note == ("the quantized student (nvfp4, modelopt) is not evaluated: only ModelOpt "
                    "FP8 checkpoints load here, not nvfp4")
    stages = build_stages(recipe, tmp_path / "work", tmp_path / "teacher",
                          tmp_path / "train.txt", tmp_path / "held.txt")
    names = [s.name for s in stages]
    assert names == ["prune", "distill", "quantize", "eval"]
    assert "quantized" not in stages[-1].inputs
    assert quantized_eval_note(load_recipe(tiny_recipe)) is None


def test_quantize_section_is_checked_by_its_schema(tiny_recipe):
    with pytest.raises(MinitronError, match=r"^tiny.yaml.quantize.scheme: 'int9' is not one"):
        load_recipe(tiny_recipe, {"quantize.scheme": "int9"})
    with pytest.raises(MinitronError, match=r"^tiny.yaml.quantize: unknown key\(s\) bits"):
        load_recipe(tiny_recipe, {"quantize.bits": 8})


def test_dry_run_plans_the_quantize_stage(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA31_8B))
    args = ["compress", "--recipe", str(packaged_recipe("llama31-8b-to-4b-width")), "--dry-run",
            "--work-dir", str(tmp_path / "work"), "--set", f"teacher={tmp_path}",
            "--set", "quantize.scheme=fp8", "--gpus", "8", "--device-memory-gb", "80"]
    assert main(args) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "quantize" in x)
    assert "fp8 (compressed-tensors)" in line
    # with QAD the last distillation writes the quantized student: no stage of its own
    assert main([*args, "--set", "quantize.qad=true"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert not any(x.lstrip(" |").startswith("quantize") for x in lines)
    distill = [x for x in lines if "writes fp8 (compressed-tensors)" in x]
    assert len(distill) == 1 and distill[0].startswith("round 1 distill (QAD)")
