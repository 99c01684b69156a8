"""CUDA and cluster paths, exercised on a CPU: torch.cuda is mocked (device counts, capabilities, RNG
states), and tensors "on a GPU" are stand-ins. What these mocks cannot show (real NCCL, real kernels)
is listed in docs/scaling.md under "reviewed, not executed"."""
from __future__ import annotations

import contextlib
import datetime
import warnings

import pytest
import torch
from torch import nn

from utils.errors import ConfigError


class FakeCuda:
    """A machine with `count` visible CUDA devices, as torch.cuda's device and RNG calls see it."""

    def __init__(self, monkeypatch, count: int, capability: tuple[int, int] = (8, 0), current: int = 0):
        self.count, self.current, self.capability = count, current, capability
        self.states: dict[int, torch.Tensor] = {}
        self.set_device_calls: list[int] = []
        cuda = torch.cuda
        for name, fn in {
            "is_available": lambda: True, "is_initialized": lambda: True, "device_count": lambda: self.count,
            "current_device": lambda: self.current, "set_device": self.set_device,
            "get_rng_state": self.get_rng_state, "set_rng_state": self.set_rng_state,
            "get_rng_state_all": lambda: [self.get_rng_state(i) for i in range(self.count)],
            "set_rng_state_all": lambda states: [self.set_rng_state(s, i) for i, s in enumerate(states)],
            "get_device_capability": lambda device=None: self.capability,
            "get_device_name": lambda device=None: "Tesla T4" if self.capability < (8, 0) else "A100",
        }.items():
            monkeypatch.setattr(cuda, name, fn)

    def _index(self, device) -> int:
        if device is None or device == "cuda":
            return self.current
        index = device if isinstance(device, int) else torch.device(device).index
        if index is None:
            return self.current
        if index >= self.count:  # what the CUDA runtime answers
            raise RuntimeError("CUDA error: invalid device ordinal")
        return index

    def set_device(self, device) -> None:
        self.current = self._index(device)
        self.set_device_calls.append(self.current)

    def get_rng_state(self, device="cuda") -> torch.Tensor:
        return self.states.get(self._index(device), torch.full((16,), self._index(device), dtype=torch.uint8))

    def set_rng_state(self, state: torch.Tensor, device="cuda") -> None:
        self.states[self._index(device)] = state


# --- item 2: RNG states and fewer GPUs ------------------------------------------------------------
def test_resume_restores_rng_of_a_run_that_saw_more_gpus(monkeypatch):
    from utils.runtime import rng_state, set_rng_state

    saved = {**rng_state(), "cuda": [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]}  # 8-GPU run
    gpus = FakeCuda(monkeypatch, count=4)
    set_rng_state(saved, torch.device("cuda", 3))  # before the fix: invalid device ordinal at the 5th state
    assert list(gpus.states) == [3] and int(gpus.states[3][0]) == 3  # this rank's GPU only
    one = FakeCuda(monkeypatch, count=1)
    set_rng_state({**saved, "cuda": saved["cuda"][:1]}, torch.device("cuda", 0))
    assert list(one.states) == [0] and int(one.states[0][0]) == 0


def test_rng_state_saves_this_process_gpu_only_and_restores_it_on_another_count(monkeypatch):
    from utils.runtime import rng_state, set_rng_state

    FakeCuda(monkeypatch, count=8, current=5)
    state = rng_state(torch.device("cuda", 5))
    assert torch.equal(state["cuda"], torch.full((16,), 5, dtype=torch.uint8))  # one state, not eight
    one = FakeCuda(monkeypatch, count=1)  # one GPU per task under CUDA_VISIBLE_DEVICES
    set_rng_state(state, torch.device("cuda", 0))
    assert list(one.states) == [0] and int(one.states[0][0]) == 5


def test_each_rank_restores_the_saved_cuda_state_on_its_own_gpu_only(monkeypatch):
    from utils.runtime import rng_state, set_rng_state

    gpus = FakeCuda(monkeypatch, count=4, current=0)
    state = rng_state(torch.device("cuda", 0))  # rank 0 saves
    for rank in range(4):  # a 4-rank resume: rank r on cuda:r
        gpus.current = rank
        set_rng_state(state, torch.device("cuda", rank))
    assert sorted(gpus.states) == [0, 1, 2, 3] and gpus.set_device_calls == []


class _NoGpu:
    """torch.cuda on a GPU host, where any call of a run that must not touch a GPU fails the test."""

    def __init__(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)  # e.g. the logger asked for GPU names
        for name in ("set_rng_state", "get_rng_state", "set_rng_state_all", "get_rng_state_all", "set_device",
                     "current_device"):
            monkeypatch.setattr(torch.cuda, name, self._fail(name))

    @staticmethod
    def _fail(name):
        def call(*args, **kwargs):
            raise AssertionError(f"torch.cuda.{name} called by a --device cpu run")
        return call


@pytest.mark.parametrize("saved", ["one", "per-gpu"])
def test_a_cpu_resume_of_a_cuda_checkpoint_touches_no_gpu(monkeypatch, saved):
    from utils.runtime import rng_state, set_rng_state

    cuda = torch.zeros(16, dtype=torch.uint8) if saved == "one" else [torch.zeros(16, dtype=torch.uint8)] * 2
    state = {**rng_state(), "cuda": cuda}  # written on CUDA
    _NoGpu(monkeypatch)  # before the fix: set_rng_state reached torch.cuda whenever CUDA was available
    expected = torch.rand(3)
    set_rng_state(state, torch.device("cpu"))
    again = rng_state(torch.device("cpu"))
    assert "cuda" not in again
    set_rng_state(state, torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected)  # the CPU generators are restored all the same


# --- item 7: pinned memory only for a CUDA run ----------------------------------------------------
@pytest.mark.parametrize(("device", "pinned"), [("cpu", False), ("cuda", True), ("cuda:1", True), ("auto", True)])
def test_data_loader_pins_memory_only_when_the_run_uses_cuda(device, pinned, monkeypatch):
    import utils.data as data
    from utils.config import TrainConfig
    from utils.runtime import DistInfo

    FakeCuda(monkeypatch, count=2)  # a GPU host
    seen = {}

    def loader(*args, **kwargs):
        seen.update(kwargs)
        return []

    monkeypatch.setattr(data, "DataLoader", loader)
    data.stream([torch.zeros(1)] * 4, TrainConfig(device=device, batch_size=1, num_workers=0), DistInfo(), 0, 0)
    assert seen["pin_memory"] is pinned


# --- items 8 and 9: joining the process group -----------------------------------------------------
def _torchrun_env(monkeypatch, rank: int, local_rank: int, world_size: int = 2) -> list[dict]:
    import torch.distributed as dist

    for key, value in {"WORLD_SIZE": world_size, "RANK": rank, "LOCAL_RANK": local_rank}.items():
        monkeypatch.setenv(key, str(value))
    joined: list[dict] = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group",
                        lambda backend=None, **kw: joined.append({"backend": backend, **kw}))
    return joined


def test_a_local_rank_beyond_the_visible_gpus_is_a_one_line_error(monkeypatch):
    from utils.runtime import init_distributed

    gpus = FakeCuda(monkeypatch, count=2)
    joined = _torchrun_env(monkeypatch, rank=3, local_rank=3, world_size=4)
    with pytest.raises(ConfigError, match=r"LOCAL_RANK 3 .*2 CUDA devices") as err:
        init_distributed("cuda")  # before the fix: "invalid device ordinal" from set_device
    assert "\n" not in str(err.value)
    assert not joined and not gpus.set_device_calls


@pytest.mark.parametrize(("count", "local_world_size"), [(1, 2), (2, 4)])
def test_more_ranks_on_a_node_than_visible_gpus_is_a_one_line_error_on_every_rank(monkeypatch, count,
                                                                                  local_world_size):
    from utils.runtime import init_distributed

    gpus = FakeCuda(monkeypatch, count=count)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(count))))
    for local_rank in range(local_world_size):  # rank 0 too: no rank joins and then waits for the others
        joined = _torchrun_env(monkeypatch, rank=local_rank, local_rank=local_rank, world_size=local_world_size)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world_size))
        with pytest.raises(ConfigError) as err:  # before the fix (one GPU): NCCL's "Duplicate GPU detected"
            init_distributed("cuda")
        message = str(err.value)
        assert "\n" not in message and f"LOCAL_WORLD_SIZE {local_world_size}" in message
        assert f"sees {count} CUDA device" in message and f"--nproc_per_node {count}" in message
        assert not joined and not gpus.set_device_calls


def test_one_visible_gpu_per_process_is_used_whatever_the_local_rank(monkeypatch):
    from utils.runtime import init_distributed

    gpus = FakeCuda(monkeypatch, count=1)  # e.g. srun --gpus-per-task 1: each task sees its own GPU as 0
    joined = _torchrun_env(monkeypatch, rank=1, local_rank=1)
    info, device = init_distributed("cuda")
    assert device == torch.device("cuda", 0) and gpus.set_device_calls == [0]
    assert info.rank == 1 and joined[0]["backend"] == "nccl"


def test_process_group_timeout_comes_from_the_flag(monkeypatch):
    from utils.config import TrainConfig, parse_config
    from utils.runtime import init_distributed

    joined = _torchrun_env(monkeypatch, rank=0, local_rank=0)
    init_distributed("cpu", timeout_minutes=90)
    assert joined[0]["backend"] == "gloo" and joined[0]["timeout"] == datetime.timedelta(minutes=90)
    cfg = parse_config({}, ["--dist-timeout", "45"], prog="t", description="", distill=False)
    assert cfg.dist_timeout == 45 and TrainConfig().dist_timeout == 60


# --- item 6: --device cuda:N in one process -------------------------------------------------------
def test_device_cuda_n_makes_gpu_n_current(monkeypatch):
    from utils.runtime import resolve_device

    gpus = FakeCuda(monkeypatch, count=2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert gpus.set_device_calls == [1]
    with pytest.raises(ConfigError, match=r"--device cuda:2: .*2 CUDA devices"):
        resolve_device("cuda:2")


# --- item 5: bf16 on GPUs without native bf16 -----------------------------------------------------
@pytest.mark.parametrize(("capability", "warns"), [((7, 5), True), ((8, 0), False)])
def test_bf16_on_a_gpu_before_compute_capability_8_warns_with_the_reason(capability, warns, monkeypatch):
    from utils import runtime

    FakeCuda(monkeypatch, count=1, capability=capability)
    monkeypatch.setattr(torch, "autocast", lambda **kwargs: contextlib.nullcontext())  # no CUDA kernels here
    runtime.check_amp_device.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # once per device, not per step
            with runtime.autocast(torch.device("cuda", 0), "bf16"):
                pass
    messages = [str(w.message) for w in caught]
    if warns:
        assert len(messages) == 1 and "compute capability 7.5" in messages[0] and "--amp fp16" in messages[0]
    else:
        assert not messages


# --- item 10: last.pth holds CPU tensors ----------------------------------------------------------
class OnGpu(torch.Tensor):
    """Stands in for a CUDA tensor on a CPU-only machine: reports a CUDA device; `.cpu()` gives a plain copy.

    Pickled as it is, it is not a plain tensor, and a plain `torch.load` (weights_only) refuses it, as a
    CPU-only machine refuses real CUDA storages."""

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", 0)

    def cpu(self, *args, **kwargs) -> torch.Tensor:
        return self.as_subclass(torch.Tensor).clone()


def test_last_pth_holds_cpu_tensors_that_load_without_map_location(tmp_path):
    from utils.checkpoint import save_training_state

    def on_gpu(t: torch.Tensor) -> torch.Tensor:
        return t.as_subclass(OnGpu)

    state = {"format": "dakd-train", "net": {"w": on_gpu(torch.arange(4.0))},
             "optimizer": {"state": {0: {"momentum_buffer": on_gpu(torch.ones(2))}}, "param_groups": [{"lr": 0.1}]},
             "rng": {"cuda": torch.zeros(3, dtype=torch.uint8)}, "step": 3}
    path = save_training_state(state, tmp_path, step=3)
    loaded = torch.load(path, weights_only=True)  # before the fix: refuses the non-CPU tensors
    assert type(loaded["net"]["w"]) is torch.Tensor and loaded["net"]["w"].device.type == "cpu"
    assert torch.equal(loaded["net"]["w"], torch.arange(4.0))
    assert torch.equal(loaded["optimizer"]["state"][0]["momentum_buffer"], torch.ones(2))
    assert loaded["optimizer"]["param_groups"] == [{"lr": 0.1}] and loaded["step"] == 3


# --- item 4: benchmark's old-way evaluation on the net's device -----------------------------------
class _Elsewhere(nn.Module):
    """A net whose weights live on another device (meta) than the loader's CPU images; CPU scores out."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, device="meta"))
        self.seen: list[torch.device] = []

    def forward(self, x):
        self.seen.append(x.device)
        scores = torch.zeros(x.shape[0], 19, *x.shape[2:])
        return scores, scores


def test_old_way_evaluation_feeds_images_on_the_nets_device(synthetic_root):
    from bench.oldway import old_eval_pipeline
    from dataset import build_dataset

    ds = build_dataset("cityscapes", synthetic_root / "cityscapes", "val", size=(32, 16), label_size="full")
    net = _Elsewhere()
    old_eval_pipeline(net, ds, 2)
    assert net.seen == [torch.device("meta")] * 2


# --- item 12: sequential (d) keeps the fp16 loss scale ---------------------------------------------
def test_sequential_second_phase_keeps_the_first_phases_grad_scaler(synthetic_root, tmp_path, monkeypatch):
    import train_gta2cs_ts_multi as distill_script
    import utils.engine as engine
    from model import build_seg_model, save_final
    from tests.conftest import tiny_train_args

    teacher = tmp_path / "teacher.pth"
    save_final(teacher, build_seg_model("drn_d_22"))
    scalers = []

    def train_phase(run):
        scalers.append(run.optimisers.scaler)  # the phase itself is not what this test is about
        run.global_step += run.phase.num_steps_stop

    monkeypatch.setattr(engine, "train_phase", train_phase)
    args = [*tiny_train_args(synthetic_root, tmp_path / "run", steps=1), "--teacher", str(teacher),
            "--paradigm", "sequential", "--num-steps-target", "1"]
    assert distill_script.main(args) == 0
    assert len(scalers) == 2 and scalers[1] is scalers[0]


# --- item 3: --deterministic says what it cannot do on a GPU --------------------------------------
@pytest.mark.parametrize(("device", "warns"), [("cuda", True), ("cpu", False)])
def test_deterministic_on_cuda_warns_that_gpu_runs_are_not_bitwise_reproducible(device, warns, monkeypatch):
    from utils.runtime import seed_everything

    monkeypatch.setattr(torch.backends.cudnn, "deterministic", torch.backends.cudnn.deterministic)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            seed_everything(0, deterministic=True, device=torch.device(device))
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        messages = [str(w.message) for w in caught]
        if warns:
            assert len(messages) == 1 and "NOT bitwise reproducible" in messages[0]
            assert "bilinear upsampling" in messages[0] and "nll_loss" in messages[0]
        else:
            assert not messages
    finally:
        torch.use_deterministic_algorithms(False)
