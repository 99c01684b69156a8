"""Losses of DAKD: segmentation CE, adversarial (vanilla / least squares) and the three distillation terms.

Every input named ``*log_probs`` holds log-probabilities over classes in dim 1 (what SegNet returns).
All results are 0-dim tensors on the inputs' device; nothing leaves the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from utils.errors import ConfigError

SOURCE_LABEL = 0.0
TARGET_LABEL = 1.0
GAN_MODES = ("Vanilla", "LS")


def seg_loss(log_probs: Tensor, labels: Tensor, ignore_index: int = 255) -> Tensor:
    """Cross entropy averaged over pixels whose label is not ``ignore_index``; 0 when there are none."""
    labels = labels.long()
    total = F.nll_loss(log_probs, labels, ignore_index=ignore_index, reduction="sum")
    # nll_loss's own "mean" divides by zero on an all-ignored batch; a sum over no pixel is a 0
    # that still belongs to the graph, so backward() works and contributes nothing.
    valid = (labels != ignore_index).sum().clamp_min(1)
    return total / valid


def adversarial_loss(d_logits: Tensor, domain_label: float, gan: str = "Vanilla") -> Tensor:
    """Discriminator logits against a constant domain label (SOURCE_LABEL or TARGET_LABEL).

    ``gan``: "Vanilla" (BCE with logits) or "LS" (least squares: MSE on the logits).
    """
    target = torch.full_like(d_logits, float(domain_label))
    mode = gan.lower()
    if mode == "vanilla":
        return F.binary_cross_entropy_with_logits(d_logits, target)
    if mode == "ls":
        return F.mse_loss(d_logits, target)
    raise ConfigError(f"unknown GAN loss {gan!r}; choose one of {', '.join(GAN_MODES)}")


def kl_distill(student_log_probs: Tensor, teacher_log_probs: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(teacher || student) per pixel, summed over classes, averaged over pixels, times T^2.

    With T != 1 both distributions are softened: log_softmax(log_p / T) equals softmax(logits / T).
    The teacher is a fixed target (detached). Classes where the teacher's probability is 0 add 0.
    """
    teacher = teacher_log_probs.detach()
    student = student_log_probs
    if temperature != 1.0:
        student = F.log_softmax(student / temperature, dim=1)
        teacher = F.log_softmax(teacher / temperature, dim=1)
    p_teacher = teacher.exp()
    support = p_teacher > 0
    # where() instead of kl_div: 0 * log 0 must be 0 and 0 * (-inf) must not become NaN (also in
    # the backward pass), so the zero-probability entries are replaced before the product.
    safe_teacher = torch.where(support, teacher, torch.zeros_like(teacher))
    terms = torch.where(support, p_teacher * (safe_teacher - student), torch.zeros_like(student))
    return terms.sum(dim=1).mean() * (temperature * temperature)


def mse_distill(student: Tensor, teacher: Tensor) -> Tensor:
    """Mean squared error between student and (detached) teacher outputs of the same shape."""
    return F.mse_loss(student, teacher.detach())


def pseudo_label_loss(student_log_probs: Tensor, teacher_log_probs: Tensor, threshold: float = 0.0,
                      ignore_index: int = 255) -> Tensor:
    """Cross entropy of the student against the teacher's arg-max ("pseudo-teacher labels").

    Pixels where the teacher's top probability is below ``threshold`` are ignored (none by default).
    """
    with torch.no_grad():
        top_log_prob, labels = teacher_log_probs.max(dim=1)
        if threshold > 0:
            labels = labels.masked_fill(top_log_prob.exp() < threshold, ignore_index)
    return seg_loss(student_log_probs, labels, ignore_index)
