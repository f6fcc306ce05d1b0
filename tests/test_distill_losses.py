"""The chunked KD loss against a direct reference computation."""

import pytest
import torch
from torch.nn import functional as F

from minitron_deploy.core.errors import MinitronError
from minitron_deploy.core.likelihood import IGNORE_INDEX, shifted_labels
from minitron_deploy.distill.losses import (
    HiddenStateLoss,
    default_layer_map,
    logit_kd_loss,
)


def reference(student, teacher, labels, temperature, lm_weight):
    """Unchunked: T^2 * mean_token KL(p_t || p_s) mixed with mean CE over labelled tokens."""
    v = student.shape[-1]
    log_q = F.log_softmax(student.reshape(-1, v).double() / temperature, -1)
    log_p = F.log_softmax(teacher.reshape(-1, v).double() / temperature, -1)
    kd = (log_p.exp() * (log_p - log_q)).sum(-1).mean() * temperature**2
    ce = F.cross_entropy(student.reshape(-1, v).double(), labels.reshape(-1),
                         ignore_index=IGNORE_INDEX)
    return (1 - lm_weight) * kd + lm_weight * ce, kd, ce


@pytest.mark.parametrize("temperature,lm_weight", [(1.0, 0.0), (2.0, 0.0), (1.0, 0.3), (1.5, 0.5)])
@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_matches_reference_value_and_gradient(temperature, lm_weight, chunk):
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(2, 7, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 7, 11, generator=gen, dtype=torch.float64)
    labels = shifted_labels(torch.randint(0, 11, (2, 7), generator=gen))
    ref_total, ref_kd, ref_ce = reference(student, teacher, labels, temperature, lm_weight)
    (ref_grad,) = torch.autograd.grad(ref_total, student)

    parts = logit_kd_loss(student, teacher, labels, temperature, lm_weight, chunk_tokens=chunk)
    parts.total.backward()
    assert parts.total.item() == pytest.approx(ref_total.item(), rel=1e-6)
    assert parts.kd.item() == pytest.approx(ref_kd.item(), rel=1e-6)
    if lm_weight:
        assert parts.lm.item() == pytest.approx(ref_ce.item(), rel=1e-6)
    torch.testing.assert_close(student.grad, ref_grad, rtol=1e-5, atol=1e-7)


def test_zero_for_identical_logits():
    logits = torch.randn(3, 4, 13)
    parts = logit_kd_loss(logits.clone().requires_grad_(), logits, temperature=2.0)
    assert abs(parts.total.item()) < 1e-6
    parts.total.backward()


def test_chunked_equals_unchunked_in_bf16():
    gen = torch.Generator().manual_seed(1)
    s = torch.randn(2, 64, 257, generator=gen).bfloat16()
    t = torch.randn(2, 64, 257, generator=gen).bfloat16()
    a = s.clone().requires_grad_()
    b = s.clone().requires_grad_()
    la = logit_kd_loss(a, t, chunk_tokens=7)
    lb = logit_kd_loss(b, t, chunk_tokens=10_000)
    la.total.backward()
    lb.total.backward()
    assert la.total.item() == pytest.approx(lb.total.item(), rel=1e-6)
    assert a.grad.dtype == torch.bfloat16
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


def test_refuses_mismatched_vocab_and_bad_settings():
    with pytest.raises(MinitronError, match="vocabulary"):
        logit_kd_loss(torch.zeros(1, 2, 5), torch.zeros(1, 2, 6))
    with pytest.raises(MinitronError, match="temperature"):
        logit_kd_loss(torch.zeros(1, 2, 5), torch.zeros(1, 2, 5), temperature=0)
    with pytest.raises(MinitronError, match="labels"):
        logit_kd_loss(torch.zeros(1, 2, 5), torch.zeros(1, 2, 5), lm_weight=0.5)


def test_hidden_state_loss_and_layer_map():
    assert default_layer_map(2, 4, 2) == [(1, 2), (2, 4)]
    assert default_layer_map(16, 32, 1) == [(16, 32)]
    states_t = tuple(torch.randn(2, 3, 8) for _ in range(5))
    same = HiddenStateLoss("cosine", [(2, 4)], 8, 8)
    assert same([None, None, states_t[4]], states_t).item() == pytest.approx(0.0, abs=1e-6)
    narrow = HiddenStateLoss("mse", [(1, 2)], 6, 8)
    loss = narrow((None, torch.randn(2, 3, 6, requires_grad=True)), states_t)
    loss.backward()
    assert narrow.projections[0].weight.grad is not None
    with pytest.raises(MinitronError):
        HiddenStateLoss("l1", [(1, 1)], 4, 4)


def test_lm_only_matches_cross_entropy():
    gen = torch.Generator().manual_seed(2)
    student = torch.randn(2, 6, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    labels = shifted_labels(torch.randint(0, 9, (2, 6), generator=gen))
    ref = F.cross_entropy(student.reshape(-1, 9), labels.reshape(-1), ignore_index=IGNORE_INDEX)
    (ref_grad,) = torch.autograd.grad(ref, student)
    parts = logit_kd_loss(student, None, labels, lm_weight=1.0, chunk_tokens=4)
    parts.total.backward()
    assert parts.total.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(student.grad, ref_grad)
