"""Losses against values computed by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from utils.errors import ConfigError
from utils.loss import (
    SOURCE_LABEL,
    TARGET_LABEL,
    adversarial_loss,
    kl_distill,
    mse_distill,
    pseudo_label_loss,
    seg_loss,
)


def log_probs_of(probs: list[list[float]]) -> torch.Tensor:
    """(1, C, 1, P) log-probabilities from a list of P per-pixel distributions."""
    return torch.tensor(probs).t().log().reshape(1, len(probs[0]), 1, len(probs))


def test_seg_loss_is_the_mean_negative_log_prob_of_valid_pixels():
    logp = log_probs_of([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    labels = torch.tensor([[[0, 1, 255]]])
    assert seg_loss(logp, labels).item() == pytest.approx(-(math.log(0.5) + math.log(0.8)) / 2, rel=1e-6)


def test_ignored_pixels_do_not_change_the_seg_loss():
    logp = torch.log_softmax(torch.randn(2, 5, 4, 4), 1)
    labels = torch.randint(0, 5, (2, 4, 4))
    labels[0, 0] = 255
    logp_changed = logp.clone()
    logp_changed[0, :, 0] = torch.log_softmax(torch.randn(5, 4), 0)  # only the ignored row differs
    assert torch.allclose(seg_loss(logp, labels), seg_loss(logp_changed, labels))


def test_all_ignored_batch_gives_zero_with_a_graph_not_nan():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = seg_loss(torch.log_softmax(logits, 1), torch.full((1, 2, 2), 255))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.count_nonzero(logits.grad) == 0


@pytest.mark.parametrize("gan", ["Vanilla", "LS"])
def test_adversarial_loss_by_hand(gan):
    logits = torch.tensor([[[[0.0, 2.0]]]])
    sigmoid = [0.5, 1 / (1 + math.exp(-2.0))]
    if gan == "Vanilla":
        to_source = -(math.log(1 - sigmoid[0]) + math.log(1 - sigmoid[1])) / 2
        to_target = -(math.log(sigmoid[0]) + math.log(sigmoid[1])) / 2
    else:
        to_source, to_target = (0.0 + 4.0) / 2, (1.0 + 1.0) / 2
    assert adversarial_loss(logits, SOURCE_LABEL, gan).item() == pytest.approx(to_source, rel=1e-6)
    assert adversarial_loss(logits, TARGET_LABEL, gan).item() == pytest.approx(to_target, rel=1e-6)


def test_unknown_gan_mode_is_a_config_error():
    with pytest.raises(ConfigError, match="Vanilla"):
        adversarial_loss(torch.zeros(1, 1, 1, 1), SOURCE_LABEL, "wgan")


def test_kl_is_zero_for_identical_distributions():
    logp = torch.log_softmax(torch.randn(2, 19, 3, 5), 1)
    assert kl_distill(logp, logp).abs().item() < 1e-6
    assert kl_distill(logp, logp, temperature=4.0).abs().item() < 1e-6


def test_kl_matches_the_closed_form():
    p = [[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]]  # teacher
    q = [[0.4, 0.4, 0.2], [0.6, 0.3, 0.1]]  # student
    by_hand = sum(sum(pi * math.log(pi / qi) for pi, qi in zip(pp, qq)) for pp, qq in zip(p, q)) / 2
    assert kl_distill(log_probs_of(q), log_probs_of(p)).item() == pytest.approx(by_hand, rel=1e-5)


def test_kl_with_temperature_softens_both_and_scales_by_t_squared():
    t = 2.0
    teacher_logits = torch.tensor([2.0, 0.0, -1.0]).reshape(1, 3, 1, 1)
    student_logits = torch.tensor([0.5, 1.0, 0.0]).reshape(1, 3, 1, 1)
    p = torch.softmax(teacher_logits / t, 1).flatten().tolist()
    q = torch.softmax(student_logits / t, 1).flatten().tolist()
    by_hand = t * t * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    got = kl_distill(torch.log_softmax(student_logits, 1), torch.log_softmax(teacher_logits, 1), temperature=t)
    assert got.item() == pytest.approx(by_hand, rel=1e-5)


def test_kl_with_zero_teacher_probabilities_is_finite_and_has_finite_gradients():
    teacher = log_probs_of([[1.0, 0.0, 0.0]])  # log 0 = -inf
    student_logits = torch.zeros(1, 3, 1, 1, requires_grad=True)
    loss = kl_distill(torch.log_softmax(student_logits, 1), teacher)
    assert loss.item() == pytest.approx(math.log(3), rel=1e-6)
    loss.backward()
    assert torch.isfinite(student_logits.grad).all()
    assert kl_distill(teacher, teacher).item() == 0.0


def test_distillation_losses_do_not_send_gradients_to_the_teacher():
    teacher = torch.log_softmax(torch.randn(1, 4, 2, 2, requires_grad=True), 1)
    student = torch.log_softmax(torch.randn(1, 4, 2, 2, requires_grad=True), 1)
    for loss in (kl_distill(student, teacher), mse_distill(student, teacher), pseudo_label_loss(student, teacher)):
        (grad_t,) = torch.autograd.grad(loss, teacher, allow_unused=True, retain_graph=True)
        assert grad_t is None


def test_mse_by_hand():
    a = torch.tensor([1.0, 2.0, 3.0])
    b = torch.tensor([1.0, 0.0, 0.0])
    assert mse_distill(a, b).item() == pytest.approx((0 + 4 + 9) / 3)


def test_pseudo_label_loss_is_ce_against_the_teacher_argmax():
    teacher = log_probs_of([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]])
    student = log_probs_of([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]])
    by_hand = -(math.log(0.5) + math.log(0.8)) / 2
    assert pseudo_label_loss(student, teacher).item() == pytest.approx(by_hand, rel=1e-6)
    # threshold 0.55 keeps only the first pixel (teacher max 0.6); 0.7 keeps none -> 0
    assert pseudo_label_loss(student, teacher, threshold=0.55).item() == pytest.approx(-math.log(0.5), rel=1e-6)
    assert pseudo_label_loss(student, teacher, threshold=0.7).item() == 0.0


def test_losses_keep_the_input_dtype_device_and_return_scalars():
    logp = torch.log_softmax(torch.randn(1, 3, 2, 2), 1)
    labels = torch.zeros(1, 2, 2, dtype=torch.long)
    for loss in (seg_loss(logp, labels), kl_distill(logp, logp), mse_distill(logp, logp),
                 pseudo_label_loss(logp, logp), adversarial_loss(logp[:, :1], SOURCE_LABEL)):
        assert loss.dim() == 0 and loss.device == logp.device and loss.dtype == torch.float32
