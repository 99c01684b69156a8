"""The training step in isolation: the objective falls, gradients go where they should, schedules."""
from __future__ import annotations

import torch

from model import Discriminator, build_seg_model
from utils.steps import LossWeights, TrainStep, first_nonfinite, poly_lr


def _batch(seed: int, with_label: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(2, 3, 32, 32, generator=g)
    batch = {"image": image}
    if with_label:  # a learnable label: class from the sign of the first channel, blurred into regions
        pooled = torch.nn.functional.avg_pool2d(image[:, :1], 9, 1, 4)[:, 0]
        batch["label"] = (pooled > 0).long() * 2
    return batch


def _step(weights: LossWeights, teacher=None, lr=0.01):
    torch.manual_seed(0)
    net = build_seg_model("drn_d_22", num_classes=3)
    discs = (Discriminator(3), Discriminator(3))
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    d_opts = tuple(torch.optim.Adam(d.parameters(), lr=1e-4) for d in discs)
    return net, TrainStep(net, discs, opt, d_opts, weights, torch.device("cpu"), teacher=teacher)


def test_segmentation_loss_falls_on_a_fixed_batch():
    net, step = _step(LossWeights(lambda_adv=(0.0, 0.0)))
    batch = _batch(0)
    first = None
    for _ in range(15):
        losses = step([batch], [])
        step.apply()
        first = first if first is not None else float(losses["seg_main"])
    assert float(losses["seg_main"]) < 0.7 * first


def test_gradients_reach_every_student_parameter_and_no_frozen_teacher_parameter():
    torch.manual_seed(1)
    teacher = build_seg_model("drn_d_22", num_classes=3)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    net, step = _step(LossWeights(distill_source=True, distill_target=True), teacher=teacher)
    step([_batch(0)], [_batch(1, with_label=False)])
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training
    step.apply()
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_iter_size_accumulates_the_mean_of_the_sub_batches():
    net, step = _step(LossWeights(lambda_adv=(0.0, 0.0)))
    a, b = _batch(0), _batch(1)
    merged = {"image": torch.cat([a["image"], b["image"]]), "label": torch.cat([a["label"], b["label"]])}
    net.eval()  # batch-norm in eval so that batch composition does not change the statistics
    step([a, b], [])
    split = [p.grad.clone() for p in net.parameters()]
    step([merged], [])
    whole = [p.grad.clone() for p in net.parameters()]
    assert all(torch.allclose(s, w, atol=1e-5) for s, w in zip(split, whole))


def test_poly_schedule_endpoints():
    assert poly_lr(2.5e-4, 0, 100) == 2.5e-4
    assert poly_lr(2.5e-4, 100, 100) == 0.0
    assert abs(poly_lr(1.0, 50, 100, 0.9) - 0.5 ** 0.9) < 1e-12


def test_first_nonfinite_names_the_bad_term():
    losses = {"seg_main": torch.tensor(1.0), "adv_main": torch.tensor(float("nan"))}
    assert first_nonfinite(losses) == "adv_main"
    assert first_nonfinite({"seg_main": torch.tensor(0.5)}) is None
