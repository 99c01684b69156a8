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
from utils.objective import ADAPTATION, PARADIGMS, build_objective, knobs_of
from utils.optim import Optimisers, poly_lr
from utils.steps import RunningStatistics, TrainStep, step_status


def _batch(seed: int, with_label: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(2, 3, 32, 32, generator=g)
    batch = {"image": image}
    if with_label:  # a learnable label: class from the sign of the first channel, blurred into regions
        pooled = torch.nn.functional.avg_pool2d(image[:, :1], 9, 1, 4)[:, 0]
        batch["label"] = (pooled > 0).long() * 2
    return batch


def _objective(spec=ADAPTATION[0], **knobs):
    return build_objective(spec, knobs_of(TrainConfig(**knobs)), num_classes=3)


SOURCE_ONLY = {"lambda_adv_aux": 0.0, "lambda_adv_main": 0.0}


def _step(objective, teacher=None, lr=0.01, amp="off"):
    """A net, its step and the run's optimisers (SGD lr, momentum 0.9; Adam 1e-4; no schedule applied)."""
    torch.manual_seed(0)
    net = build_seg_model("drn_d_22", num_classes=3)
    discs = (Discriminator(3), Discriminator(3))
    optimisers = Optimisers(net, discs, TrainConfig(learning_rate=lr, learning_rate_d=1e-4, amp=amp), "cpu")
    optimisers.start_phase(100, objective.adversarial_levels)
    step = TrainStep(net, discs, objective, torch.device("cpu"), teacher=teacher, scale=optimisers.scale)
    return net, step, optimisers


def test_segmentation_loss_falls_on_a_fixed_batch():
    net, step, optimisers = _step(_objective(**SOURCE_ONLY))
    batch = _batch(0)
    first = None
    for _ in range(15):
        optimisers.zero_grad()
        losses = step([batch], [])
        optimisers.step()
        first = first if first is not None else float(losses["seg_main_src"])
    assert float(losses["seg_main_src"]) < 0.7 * first


def test_gradients_reach_every_student_parameter_and_no_frozen_teacher_parameter():
    torch.manual_seed(1)
    teacher = build_seg_model("drn_d_22", num_classes=3)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    net, step, optimisers = _step(_objective(PARADIGMS["both"][0]), teacher=teacher)
    step([_batch(0)], [_batch(1, with_label=False)])
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training
    optimisers.step()
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())


# The sub-batches' gradients, accumulated, equal the whole batch's up to float32 summation order: measured
# at most 1.1e-6 of each tensor's gradient norm with AVX-512, AVX2 and scalar kernels, 1 or 2 threads. The
# bound is 100 times that; a sub-batch weighted 1% off is 7e-3 away (tried).
ITER_SIZE_RTOL = 1e-4


@pytest.mark.float_sensitive
def test_iter_size_accumulates_the_mean_of_the_sub_batches():
    net, step, optimisers = _step(_objective(**SOURCE_ONLY))
    a, b = _batch(0), _batch(1)
    merged = {"image": torch.cat([a["image"], b["image"]]), "label": torch.cat([a["label"], b["label"]])}
    net.eval()  # batch-norm in eval so that batch composition does not change the statistics
    step([a, b], [])
    split = [p.grad.clone() for p in net.parameters()]
    optimisers.zero_grad()
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
    # a single-level run (no aux adversarial term) with a loss scaler, as --amp fp16 builds on CUDA
    net, step, optimisers = _step(_objective(lambda_adv_aux=0.0), amp="fp16")
    discs = step.discriminators
    assert optimisers.scaler.is_enabled()
    aux_before = [p.clone() for p in discs[0].parameters()]
    main_before = [p.clone() for p in discs[1].parameters()]
    step([_batch(0)], [_batch(1, with_label=False)])
    optimisers.step()
    assert all(torch.equal(a, b) for a, b in zip(aux_before, discs[0].parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(main_before, discs[1].parameters()))


def test_running_statistics_put_back_undo_what_a_forward_did_to_batch_norm():
    net, step, _ = _step(_objective(**SOURCE_ONLY))
    statistics = RunningStatistics(net)
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
    statistics.keep()
    poisoned = _batch(0)
    poisoned["image"][0, 0, 0, 0] = float("inf")  # a non-finite forward: NaN/Inf running statistics
    step([poisoned], [])
    assert any(not torch.isfinite(v.float()).all() for k, v in net.state_dict().items() if "running_var" in k)
    statistics.put_back()
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())


def test_the_teacher_runs_only_for_terms_that_read_it():
    calls = []
    torch.manual_seed(1)
    teacher = build_seg_model("drn_d_22", num_classes=3)
    teacher.register_forward_hook(lambda *args: calls.append(1))
    # the original form's KL terms read no teacher: alone on target batches, they must not run it
    objective = _objective(PARADIGMS["target"][0], form="original", lambda_mse=0.0, lambda_pseudo=0.0)
    assert not objective.reads_teacher("target") and not objective.needs_teacher
    _, step, _ = _step(objective, teacher=teacher)
    step([_batch(0)], [_batch(1, with_label=False)])
    assert calls == []
    _, step, _ = _step(_objective(PARADIGMS["target"][0]), teacher=teacher)
    step([_batch(0)], [_batch(1, with_label=False)])
    assert calls == [1]  # the target pass only: paradigm (b) has no distillation on source batches
