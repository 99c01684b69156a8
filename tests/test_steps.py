"""The training step in isolation: the objective falls, gradients go where they should, schedules."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from model import Discriminator, build_seg_model
from tests.tolerances import relative_error
from utils.config import TrainConfig
from utils.objective import ADAPTATION, PARADIGMS, build_objective, knob_values
from utils.steps import TrainStep, poly_lr, step_status


def _batch(seed: int, with_label: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(2, 3, 32, 32, generator=g)
    batch = {"image": image}
    if with_label:  # a learnable label: class from the sign of the first channel, blurred into regions
        pooled = torch.nn.functional.avg_pool2d(image[:, :1], 9, 1, 4)[:, 0]
        batch["label"] = (pooled > 0).long() * 2
    return batch


def _objective(spec=ADAPTATION[0], **knobs):
    return build_objective(spec, knob_values(TrainConfig(**knobs)))


SOURCE_ONLY = {"lambda_adv_aux": 0.0, "lambda_adv_main": 0.0}


def _step(objective, teacher=None, lr=0.01):
    torch.manual_seed(0)
    net = build_seg_model("drn_d_22", num_classes=3)
    discs = (Discriminator(3), Discriminator(3))
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    d_opts = tuple(torch.optim.Adam(d.parameters(), lr=1e-4) for d in discs)
    return net, TrainStep(net, discs, opt, d_opts, objective, torch.device("cpu"), teacher=teacher)


def test_segmentation_loss_falls_on_a_fixed_batch():
    net, step = _step(_objective(**SOURCE_ONLY))
    batch = _batch(0)
    first = None
    for _ in range(15):
        losses = step([batch], [])
        step.apply()
        first = first if first is not None else float(losses["seg_main_src"])
    assert float(losses["seg_main_src"]) < 0.7 * first


def test_gradients_reach_every_student_parameter_and_no_frozen_teacher_parameter():
    torch.manual_seed(1)
    teacher = build_seg_model("drn_d_22", num_classes=3)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    net, step = _step(_objective(PARADIGMS["both"][0]), teacher=teacher)
    step([_batch(0)], [_batch(1, with_label=False)])
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training
    step.apply()
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


# The sub-batches' gradients, accumulated, equal the whole batch's up to float32 summation order: measured
# at most 1.1e-6 of each tensor's gradient norm with AVX-512, AVX2 and scalar kernels, 1 or 2 threads. The
# bound is 100 times that; a sub-batch weighted 1% off is 7e-3 away (tried).
ITER_SIZE_RTOL = 1e-4


@pytest.mark.float_sensitive
def test_iter_size_accumulates_the_mean_of_the_sub_batches():
    net, step = _step(_objective(**SOURCE_ONLY))
    a, b = _batch(0), _batch(1)
    merged = {"image": torch.cat([a["image"], b["image"]]), "label": torch.cat([a["label"], b["label"]])}
    net.eval()  # batch-norm in eval so that batch composition does not change the statistics
    step([a, b], [])
    split = [p.grad.clone() for p in net.parameters()]
    step([merged], [])
    whole = [p.grad.clone() for p in net.parameters()]
    errors = {name: relative_error(s, w) for (name, _), s, w in zip(net.named_parameters(), split, whole)}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= ITER_SIZE_RTOL, f"{worst}: accumulated gradient off by {errors[worst]:.2e} of its norm"


def test_poly_schedule_endpoints():
    assert poly_lr(2.5e-4, 0, 100) == 2.5e-4
    assert poly_lr(2.5e-4, 100, 100) == 0.0
    assert abs(poly_lr(1.0, 50, 100, 0.9) - 0.5 ** 0.9) < 1e-12


def test_step_status_names_the_bad_term_and_the_signal():
    losses = {"seg_main": torch.tensor(1.0), "adv_main": torch.tensor(float("nan")), "d_main": torch.tensor(-1.0)}
    assert step_status(losses) == ("adv_main", None)
    assert step_status({"seg_main": torch.tensor(0.5)}) == (None, None)
    assert step_status({"seg_main": torch.tensor(float("inf"))}, stop_signal=15) == ("seg_main", 15)


def _status_on_rank(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=2)
    try:  # rank 1 alone has a NaN loss, rank 0 alone received SIGTERM
        losses = {"seg_main": torch.tensor(float("nan") if rank == 1 else 0.7), "adv_main": torch.tensor(0.1)}
        status = step_status(losses, stop_signal=15 if rank == 0 else None, distributed=True)
        Path(out, f"rank{rank}.json").write_text(json.dumps(status))
    finally:
        dist.destroy_process_group()


def test_step_status_is_agreed_across_ranks(tmp_path):
    store = f"file://{tmp_path / 'store'}"  # a file rendezvous: no port to race for
    mp.spawn(_status_on_rank, args=(store, str(tmp_path)), nprocs=2)
    statuses = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert statuses == [["seg_main", 15], ["seg_main", 15]]


def test_fp16_scaler_steps_only_the_discriminators_in_use():
    torch.manual_seed(0)
    net = build_seg_model("drn_d_22", num_classes=3)
    discs = (Discriminator(3), Discriminator(3))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    d_opts = tuple(torch.optim.Adam(d.parameters(), lr=1e-4) for d in discs)
    # a single-level run (no aux adversarial term) with a loss scaler, as --amp fp16 builds on CUDA
    step = TrainStep(net, discs, opt, d_opts, _objective(lambda_adv_aux=0.0), torch.device("cpu"),
                     scaler=torch.amp.GradScaler("cpu", enabled=True))
    aux_before = [p.clone() for p in discs[0].parameters()]
    main_before = [p.clone() for p in discs[1].parameters()]
    step([_batch(0)], [_batch(1, with_label=False)])
    step.apply()
    assert all(torch.equal(a, b) for a, b in zip(aux_before, discs[0].parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(main_before, discs[1].parameters()))
