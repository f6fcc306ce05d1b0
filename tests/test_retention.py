"""Retention of a student against its teacher, and the perplexity's standard error."""

import math

import pytest
import torch
from tiny_models import tiny_model

from minitron_deploy.eval.perplexity import (
    perplexity,
    perplexity_with_stderr,
    sequence_nll,
)
from minitron_deploy.eval.retention import retention, retention_lines


def _mc(acc: float, n: int = 100) -> dict:
    se = math.sqrt(acc * (1 - acc) / (n - 1))
    return {"n": n, "acc": acc, "acc_stderr": se, "acc_norm": acc, "acc_norm_stderr": se}


def test_perplexity_stderr_is_the_spread_of_sequence_losses():
    model = tiny_model("llama").eval()
    seqs = torch.randint(0, 97, (6, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        losses = torch.tensor([float(model(input_ids=s[None], labels=s[None]).loss)
                               for s in seqs], dtype=torch.float64)
    ppl, se = perplexity_with_stderr(model, seqs, batch_size=4)
    assert ppl == pytest.approx(float(losses.mean().exp()), rel=1e-5)
    assert se == pytest.approx(ppl * float(losses.std()) / math.sqrt(6), rel=1e-4)
    assert perplexity(model, seqs, batch_size=4) == ppl
    nll, count = sequence_nll(model, seqs, batch_size=5)
    assert count.tolist() == [11.0] * 6
    assert (nll / count).tolist() == pytest.approx(losses.tolist(), rel=1e-5)


def test_retention_of_a_student_equal_to_its_teacher_is_whole():
    teacher = {"ppl": 20.0, "ppl_stderr": 1.0, "piqa": _mc(0.6), "winogrande": _mc(0.55)}
    kept = retention(teacher, teacher, {"piqa": 0.5, "winogrande": 0.5})
    assert kept.ppl_ratio == 1.0 and kept.accuracy_kept == pytest.approx(1.0)
    assert kept.ppl_ratio_stderr == pytest.approx(math.sqrt(2) * 1.0 / 20.0)
    assert kept.tasks == ("piqa", "winogrande")


def test_retention_counts_only_accuracy_above_chance():
    teacher = {"ppl": 10.0, "ppl_stderr": 0.0, "hellaswag": _mc(0.45), "piqa": _mc(0.65)}
    student = {"ppl": 15.0, "ppl_stderr": 0.0, "hellaswag": _mc(0.30), "piqa": _mc(0.55)}
    kept = retention(teacher, student, {"hellaswag": 0.25, "piqa": 0.5})
    assert kept.ppl_ratio == pytest.approx(1.5) and kept.ppl_ratio_stderr == 0.0
    gained, margin = (0.30 - 0.25) + (0.55 - 0.5), (0.45 - 0.25) + (0.65 - 0.5)
    assert kept.accuracy_kept == pytest.approx(gained / margin)
    se_g = math.hypot(_mc(0.30)["acc_stderr"], _mc(0.55)["acc_stderr"])
    se_m = math.hypot(_mc(0.45)["acc_stderr"], _mc(0.65)["acc_stderr"])
    assert kept.accuracy_kept_stderr == pytest.approx(
        math.hypot(se_g / margin, gained / margin * se_m / margin))
    assert any("above-chance" in line for line in retention_lines("student", kept))


def test_no_share_is_stated_for_a_teacher_at_chance():
    teacher, student = {"winogrande": _mc(0.48)}, {"winogrande": _mc(0.52)}
    kept = retention(teacher, student, {"winogrande": 0.5})
    assert kept.accuracy_kept is None and kept.ppl_ratio is None
    assert "not above chance" in retention_lines("student", kept)[0]
