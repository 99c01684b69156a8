"""The CUDA paths that tests/test_cuda_paths.py checks with a mocked torch.cuda, on a real GPU.

Marked `gpu`: skipped where CUDA is not available (tests/conftest.py); `benchmark.py --gpu` runs them on a
lent GPU (docs/scaling.md#gpu-check). Each test says which mocked test it backs. The process group of the
`LOCAL_RANK` tests stays mocked (one process); real NCCL runs in a one-rank group.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from tests.conftest import tiny_train_args
from tests.test_cuda_paths import _torchrun_env
from utils.errors import ConfigError

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda", 0)


@pytest.fixture(autouse=True)
def back_on_gpu_0():
    """Each test starts and ends with GPU 0 current."""
    torch.cuda.set_device(0)
    yield
    torch.cuda.set_device(0)


def _cuda_args(root, out) -> list[str]:
    args = tiny_train_args(root, out, steps=2)
    args[args.index("--device") + 1] = "cuda"
    return args


# backs test_rng_state_saves_this_process_gpu_only_and_restores_it_on_another_count,
# test_resume_restores_rng_of_a_run_that_saw_more_gpus and
# test_each_rank_restores_the_saved_cuda_state_on_its_own_gpu_only
def test_rng_state_holds_the_runs_gpu_generator_and_restores_it():
    from utils.runtime import rng_state, set_rng_state

    torch.zeros(1, device=CUDA)  # CUDA initialised, as in a training run
    state = rng_state(CUDA)
    assert isinstance(state["cuda"], torch.Tensor) and torch.equal(state["cuda"], torch.cuda.get_rng_state(CUDA))
    first = torch.rand(4, device=CUDA)
    set_rng_state(state, CUDA)
    assert torch.equal(torch.rand(4, device=CUDA), first)
    # an older checkpoint: one state per GPU of a larger machine; this GPU gets its own entry
    set_rng_state({**state, "cuda": [state["cuda"]] * (torch.cuda.device_count() + 3)}, CUDA)
    assert torch.equal(torch.rand(4, device=CUDA), first)


# backs test_a_cpu_resume_of_a_cuda_checkpoint_touches_no_gpu
def test_a_cpu_run_restoring_a_cuda_checkpoint_leaves_the_gpu_generator_alone():
    from utils.runtime import rng_state, set_rng_state

    torch.zeros(1, device=CUDA)
    state = rng_state(CUDA)
    torch.rand(8, device=CUDA)  # the GPU generator moves on
    before = torch.cuda.get_rng_state(CUDA)
    set_rng_state(state, torch.device("cpu"))
    assert torch.equal(torch.cuda.get_rng_state(CUDA), before) and "cuda" not in rng_state(torch.device("cpu"))


# backs test_data_loader_pins_memory_only_when_the_run_uses_cuda
def test_training_batches_are_pinned_for_a_cuda_run_only(synthetic_root):
    from dataset import build_dataset
    from utils.config import TrainConfig
    from utils.data import stream
    from utils.runtime import DistInfo

    dataset = build_dataset("gta5", synthetic_root / "gta5", "train", size=(64, 32))
    for device, pinned in (("cuda", True), ("cpu", False)):
        batches = stream(dataset, TrainConfig(device=device, batch_size=2, num_workers=0), DistInfo(), 0, 0)
        assert next(batches)["image"].is_pinned() is pinned


# backs test_device_cuda_n_makes_gpu_n_current
def test_device_cuda_n_makes_gpu_n_current_and_refuses_a_missing_one():
    from utils.runtime import resolve_device

    n = torch.cuda.device_count()
    assert resolve_device(f"cuda:{n - 1}") == torch.device("cuda", n - 1)
    assert torch.cuda.current_device() == n - 1
    with pytest.raises(ConfigError, match=rf"--device cuda:{n}: .*{n} CUDA devices"):
        resolve_device(f"cuda:{n}")


# backs test_one_visible_gpu_per_process_is_used_whatever_the_local_rank
def test_local_rank_picks_this_processs_gpu(monkeypatch):
    from utils.runtime import init_distributed

    joined = _torchrun_env(monkeypatch, rank=1, local_rank=1)
    _, device = init_distributed("cuda")
    expected = 0 if torch.cuda.device_count() == 1 else 1
    assert device == torch.device("cuda", expected) and torch.cuda.current_device() == expected
    assert joined[0]["backend"] == "nccl"


# backs test_a_local_rank_beyond_the_visible_gpus_is_a_one_line_error (needs two GPUs to be reachable)
@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.device_count() < 2,
                    reason="with one visible GPU every LOCAL_RANK uses it")
def test_a_local_rank_beyond_the_visible_gpus_is_a_one_line_error(monkeypatch):
    from utils.runtime import init_distributed

    n = torch.cuda.device_count()
    _torchrun_env(monkeypatch, rank=n, local_rank=n, world_size=n + 1)
    with pytest.raises(ConfigError, match=rf"LOCAL_RANK {n} .*{n} CUDA devices"):
        init_distributed("cuda")


# backs test_more_ranks_on_a_node_than_visible_gpus_is_a_one_line_error_on_every_rank
def test_more_ranks_on_a_node_than_the_gpus_here_is_a_one_line_error(monkeypatch):
    from utils.runtime import init_distributed

    n = torch.cuda.device_count()
    joined = _torchrun_env(monkeypatch, rank=0, local_rank=0, world_size=n + 1)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(n + 1))
    with pytest.raises(ConfigError, match=rf"LOCAL_WORLD_SIZE {n + 1}: .*sees {n} CUDA device") as err:
        init_distributed("cuda")
    assert "\n" not in str(err.value) and not joined


# NCCL itself, listed as "reviewed, not executed" until a GPU ran it: a one-rank group, a collective, a DDP step
def test_nccl_all_reduce_and_a_ddp_step_in_a_one_rank_group(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from model import build_seg_model

    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        t = torch.arange(3.0, device=CUDA)
        dist.all_reduce(t)
        assert t.tolist() == [0.0, 1.0, 2.0]
        net = DDP(build_seg_model("drn_d_22").to(CUDA), device_ids=[0])
        aux, main = net(torch.randn(2, 3, 32, 64, device=CUDA))
        (aux.mean() + main.mean()).backward()
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        dist.barrier()
    finally:
        dist.destroy_process_group()


# backs test_bf16_on_a_gpu_before_compute_capability_8_warns_with_the_reason
def test_bf16_autocast_runs_and_warns_only_below_compute_capability_8():
    from utils import runtime

    runtime.check_amp_device.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with runtime.autocast(CUDA, "bf16"):
            y = torch.nn.functional.conv2d(torch.randn(1, 3, 8, 8, device=CUDA), torch.randn(4, 3, 3, 3, device=CUDA))
    assert y.dtype == torch.bfloat16
    warned = any("compute capability" in str(w.message) for w in caught)
    assert warned == (torch.cuda.get_device_capability(CUDA)[0] < 8)


# backs test_last_pth_holds_cpu_tensors_that_load_without_map_location
def test_last_pth_of_cuda_tensors_loads_on_the_cpu_without_map_location(tmp_path):
    from utils.checkpoint import save_training_state
    from utils.runtime import rng_state

    optimizer = {"state": {0: {"momentum_buffer": torch.ones(2, device=CUDA)}}, "param_groups": [{"lr": 0.1}]}
    state = {"format": "dakd-train", "net": {"w": torch.arange(4.0, device=CUDA)}, "optimizer": optimizer,
             "rng": rng_state(), "step": 3}
    loaded = torch.load(save_training_state(state, tmp_path, step=3), weights_only=True)
    assert loaded["net"]["w"].device.type == "cpu" and torch.equal(loaded["net"]["w"], torch.arange(4.0))
    assert loaded["optimizer"]["state"][0]["momentum_buffer"].device.type == "cpu"


# backs test_old_way_evaluation_feeds_images_on_the_nets_device
def test_old_way_evaluation_runs_a_gpu_net_on_the_loaders_cpu_images(synthetic_root):
    from bench.oldway import old_eval_pipeline
    from dataset import build_dataset
    from model import build_seg_model

    ds = build_dataset("cityscapes", synthetic_root / "cityscapes", "val", size=(64, 32), label_size="full")
    out = old_eval_pipeline(build_seg_model("drn_d_22").to(CUDA), ds, 2)
    assert out["num_images"] == 2 and (math.isnan(out["mIoU"]) or 0.0 <= out["mIoU"] <= 1.0)


# backs test_sequential_second_phase_keeps_the_first_phases_grad_scaler, with the real phases on the GPU; and
# the three scripts and eval_cs.py on CUDA with every precision flag
def test_the_scripts_train_and_evaluate_on_the_gpu(synthetic_root, tmp_path, monkeypatch):
    import eval_cs
    import train_gta2cs_multi_drnd22 as student_script
    import train_gta2cs_multi_drnd38 as teacher_script
    import train_gta2cs_ts_multi as distill_script
    import utils.engine as engine

    teacher_dir, student_dir, dakd_dir = tmp_path / "teacher", tmp_path / "student", tmp_path / "dakd"
    assert teacher_script.main([*_cuda_args(synthetic_root, teacher_dir), "--amp", "bf16", "--channels-last"]) == 0
    assert student_script.main([*_cuda_args(synthetic_root, student_dir), "--amp", "fp16"]) == 0
    scalers, real_phase = [], engine.train_phase

    def train_phase(run):
        scalers.append(run.optimisers.scaler)
        real_phase(run)

    monkeypatch.setattr(engine, "train_phase", train_phase)
    args = [*_cuda_args(synthetic_root, dakd_dir), "--teacher", str(teacher_dir / "final.pth"),
            "--paradigm", "sequential", "--num-steps-target", "2", "--amp", "fp16"]
    assert distill_script.main(args) == 0
    assert len(scalers) == 2 and scalers[1] is scalers[0] and scalers[0].is_enabled()
    for folder in (teacher_dir, student_dir, dakd_dir):
        saved = torch.load(folder / "last.pth", weights_only=True)
        assert all(v.device.type == "cpu" for v in saved["net"].values())
    summary = eval_cs.main(["--restore-from", str(dakd_dir / "final.pth"), "--data-dir",
                            str(synthetic_root / "cityscapes"), "--input-size", "64,32", "--device", "cuda",
                            "--amp", "bf16", "--channels-last", "--fold-bn", "--num-workers", "0", "--no-progress"])
    assert summary["num_images"] == 4 and summary["device"] == "cuda" and summary["mIoU"] is not None
