"""The accuracy study's bookkeeping: equal-size depth, claim verdicts and the written report."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from tiny_models import tiny_config

from minitron_deploy.core.shape import ModelShape, count_params

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy"))
import study
import study_report

TASKS = study_report.TASKS


def _metrics(ppl: float, acc: float, n: int = 400) -> dict:
    se = (acc * (1 - acc) / (n - 1)) ** 0.5
    task = {"n": n, "acc": acc, "acc_stderr": se, "acc_norm": acc, "acc_norm_stderr": se}
    return {"ppl": ppl, **{t: dict(task) for t in TASKS}}


def test_equal_size_depth_is_the_closest_layer_count():
    config = tiny_config("llama", num_hidden_layers=8)
    source = ModelShape.from_config(config)
    target = count_params(config, replace(source, num_layers=5)) + 10
    assert study.equal_size_depth(config, target) == 5
    sizes = {n: abs(count_params(config, replace(source, num_layers=n)) - target)
             for n in range(1, 8)}
    assert min(sizes, key=sizes.get) == 5


def test_study_rows_cover_every_criterion_depth_metric_and_baseline():
    names = [r.name for r in study.study_rows(["activation", "random"])]
    assert names[0] == "teacher"
    for expected in ("width/activation/none", "width/activation/kd", "width/random/kd",
                     "depth/loss/kd", "depth/bi/kd", "depth/accuracy/kd",
                     "width/activation/lm", "scratch/random-init/kd"):
        assert expected in names
    assert len(names) == len(set(names))


@pytest.mark.parametrize("ppl_a, acc_a, label", [
    (10.0, 0.60, "confirmed"),
    (10.0, 0.41, "confirmed on perplexity (accuracy within noise)"),
    (10.0, 0.30, "mixed"),
    (30.0, 0.60, "mixed"),
    (30.0, 0.40, "NOT confirmed"),
])
def test_verdict_uses_perplexity_and_the_accuracy_noise(ppl_a, acc_a, label):
    evals = {"a": _metrics(ppl_a, acc_a), "b": _metrics(20.0, 0.40)}
    text = study_report.verdict(study_report.compare(evals, "a", "b"))
    assert text.startswith(f"**{label}**:")


def test_mmlu_is_above_chance_only_beyond_two_standard_errors():
    assert study_report.mmlu_above_chance({"acc": 0.35, "acc_stderr": 0.02})
    assert not study_report.mmlu_above_chance({"acc": 0.28, "acc_stderr": 0.02})


def test_report_writes_table_claims_json_and_plots(tmp_path):
    rows = study.study_rows(["activation", "magnitude", "random"])
    quality = {"teacher": (20.0, 0.45), "width/activation/kd": (40.0, 0.40),
               "scratch/random-init/kd": (900.0, 0.30), "width/activation/lm": (45.0, 0.39)}
    meta = {"command": "study.py run", "date": "2026-11-23", "commit": "abc1234",
            "machine": {"cpus": 2}, "profile": "cpu", "teacher": "t", "data": "d",
            "heldout": "h", "data_tokens": 1000, "depth_layers": 3,
            "params": {"teacher": 100, "width": 50, "depth": 52},
            "width_shape": {"hidden_size": 8},
            "settings": {**{k: 1 for k in ("tokens", "seq_len", "batch_size", "lr",
                                           "calib_samples", "calib_seq_len", "ppl_seqs",
                                           "curve_limit")},
                         "precision": "bf16", "eval_limit": 10},
            "rows": [{"name": r.name, "shape": r.shape, "chosen_by": r.chosen_by,
                      "retrain": r.retrain,
                      "train_log": [{"tokens": 8, "kd": 2.0, "lm": 3.0},
                                    {"tokens": 16, "kd": 1.0, "lm": 2.0}]
                      if r.retrain != "none" else None} for r in rows]}
    (tmp_path / "evals").mkdir()
    (tmp_path / "curves").mkdir()
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    for r in rows:
        ppl, acc = quality.get(r.name, (60.0, 0.35))
        (tmp_path / "evals" / f"{r.slug}.json").write_text(json.dumps(_metrics(ppl, acc)))
        if r.retrain != "none":
            curve = {"0": _metrics(ppl * 10, 0.3), "16": _metrics(ppl, acc)}
            (tmp_path / "curves" / f"{r.slug}.json").write_text(json.dumps(curve))

    study_report.write_report(tmp_path)

    text = (tmp_path / "results.md").read_text()
    assert "| `width/activation/kd` | 0.0M | 0 | 40.00 |" in text
    scratch = text.split("from scratch")[1].split("\n- ")[0]
    assert "**confirmed**: `width/activation/kd` ppl 40.00 vs `scratch/random-init/kd` 900.00" \
        in scratch
    lm = text.split("LM-loss retraining")[1].split("\n- ")[0]
    assert "**confirmed on perplexity (accuracy within noise)**" in lm
    combined = json.loads((tmp_path / "results.json").read_text())
    assert len(combined["evals"]) == len(rows)
    assert combined["claims"][0]["claim"].startswith("Pruning + KD")
    for plot in ("training_loss.png", "accuracy_vs_tokens.png", "criteria.png"):
        assert (tmp_path / plot).stat().st_size > 1000
