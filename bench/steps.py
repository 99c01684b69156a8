"""Training-step cases of the GPU check: each training script's real step (the engine's nets, optimisers,
objective and `TrainStep`) at the paper's sizes and batch, on synthetic frames, timed and measured.

A case is one (script, way, precision, memory format, batch) combination. The nets of a script are built
once, on the CPU, by the run's `build_nets` (random weights; the DAKD teacher read from a checkpoint, as
the script reads it), and every case starts from those same weights, moved to the device.
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import memory
from bench.oldway import OldWayStep, old_way_objective
from model import build_seg_model, save_final
from utils.config import TrainConfig
from utils.errors import ConfigError
from utils.nets import build_nets
from utils.objective import knobs_of
from utils.optim import Optimisers
from utils.run import plan_phases
from utils.runtime import DistInfo, compile_nets, unwrap
from utils.steps import RunningStatistics, TrainStep, step_status

NUM_CLASSES = 19
IGNORE = 255
DISTINCT_BATCHES = 2  # the loop alternates between this many source (and target) batches


@dataclass(frozen=True)
class ScriptSetting:
    """A training script's net, batch and input sizes (W, H): what its constants say."""

    key: str
    script: str
    arch: str
    aux_layer: int | None
    batch: int
    source_size: tuple[int, int]
    target_size: tuple[int, int]
    teacher_arch: str | None = None
    note: str = ""


# tests/test_gpu_check.py checks these against the scripts' constants
SCRIPTS: tuple[ScriptSetting, ...] = (
    ScriptSetting("teacher", "train_gta2cs_multi_drnd38.py", "drn_d_38", 7, 5, (1024, 512), (1024, 512)),
    ScriptSetting("student", "train_gta2cs_multi_drnd22.py", "drn_d_22", 6, 3, (1024, 512), (1280, 720)),
    ScriptSetting("dakd", "train_gta2cs_ts_multi.py", "drn_d_22", 6, 2, (1024, 512), (1280, 720),
                  teacher_arch="drn_d_38", note="phase (c) of sequential: distillation on both domains"),
    ScriptSetting("deeplab", "train_gta2cs_multi_drnd38.py --arch deeplabv2_resnet101", "deeplabv2_resnet101",
                  None, 1, (1280, 720), (1024, 512), note="AdaptSegNet's batch and sizes"),
)
SCRIPT = {s.key: s for s in SCRIPTS}


def quick_size(size: tuple[int, int]) -> tuple[int, int]:
    """A tiny stand-in for a paper size: a 16th of each side, at least the discriminators' 32."""
    return max(32, size[0] // 16), max(32, size[1] // 16)


def quick_setting(setting: ScriptSetting) -> ScriptSetting:
    """`setting` at tiny sizes and batch 1 (`--quick`)."""
    return replace(setting, batch=1, source_size=quick_size(setting.source_size),
                   target_size=quick_size(setting.target_size))


def second_batch(batch: int) -> int:
    """The other batch size whose peak memory, with the script's own, gives the memory-per-image fit."""
    return 1 if batch > 1 else 2


@dataclass(frozen=True)
class Case:
    """One measured configuration of a script's step."""

    script: str
    amp: str = "off"
    channels_last: bool = False
    way: str = "ours"            # "ours" or "old way" (bench/oldway.py's reproduction of the original code)
    batch: int | None = None     # None: the script's batch
    compile: bool = False

    @property
    def precision(self) -> str:
        """fp32, bf16 or fp16."""
        return "fp32" if self.amp == "off" else self.amp

    @property
    def name(self) -> str:
        """A short readable label, e.g. 'student bf16 CL' or 'teacher fp32 old way b1'."""
        parts = [self.script, self.precision] + (["CL"] if self.channels_last else []) \
            + (["compiled"] if self.compile else []) + (["old way"] if self.way != "ours" else []) \
            + ([f"b{self.batch}"] if self.batch is not None else [])
        return " ".join(parts)


def config(setting: ScriptSetting, batch: int | None = None, teacher_path: str | None = None) -> TrainConfig:
    """The script's `TrainConfig` for a benchmark case: its net, batch, sizes and objective; random weights."""
    return TrainConfig(arch=setting.arch, aux_layer=setting.aux_layer, batch_size=batch or setting.batch,
                       input_size=setting.source_size, input_size_target=setting.target_size, pretrained="none",
                       teacher=teacher_path if setting.teacher_arch else None, num_steps_target=1, device="cpu")


def synthetic_batches(setting: ScriptSetting, batch: int, pin: bool, seed: int = 0) -> tuple[list, list]:
    """DISTINCT_BATCHES source batches (images, labels with some ignored pixels) and as many target batches,
    on the CPU (pinned for a GPU, as the training loader pins them)."""
    gen = torch.Generator().manual_seed(seed)

    def images(size):
        w, h = size
        x = torch.randn(batch, 3, h, w, generator=gen)
        return x.pin_memory() if pin else x

    def labels(size):
        w, h = size
        y = torch.randint(0, NUM_CLASSES, (batch, h, w), generator=gen)
        y[torch.rand(batch, h, w, generator=gen) < 0.05] = IGNORE
        return y.pin_memory() if pin else y

    sources = [{"image": images(setting.source_size), "label": labels(setting.source_size)}
               for _ in range(DISTINCT_BATCHES)]
    targets = [{"image": images(setting.target_size)} for _ in range(DISTINCT_BATCHES)]
    return sources, targets


class ScriptNets:
    """A script's nets built once on the CPU as a run builds them; `place` puts the same starting weights on a
    device."""

    def __init__(self, setting: ScriptSetting, folder: Path):
        teacher_path = None
        if setting.teacher_arch:
            teacher_path = folder / f"{setting.key}_teacher.pth"
            if not teacher_path.exists():
                torch.manual_seed(1)
                save_final(teacher_path, build_seg_model(setting.teacher_arch))
        self.setting, self.teacher_path = setting, str(teacher_path) if teacher_path else None
        self.cfg = config(setting, teacher_path=self.teacher_path)
        torch.manual_seed(0)
        self.net, self.discs, self.teacher = build_nets(self.cfg, torch.device("cpu"), DistInfo())
        self._initial = [copy.deepcopy(m.state_dict()) for m in self.modules]

    @property
    def modules(self) -> list[torch.nn.Module]:
        """The net, both discriminators and (DAKD) the teacher."""
        return [self.net, *self.discs] + ([self.teacher] if self.teacher is not None else [])

    def place(self, device: torch.device, channels_last: bool) -> None:
        """Every module on `device` with its starting weights, in the case's memory format (as build_nets)."""
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        for module, state in zip(self.modules, self._initial):
            module.load_state_dict(state)
            module.to(device)
        self.net.to(memory_format=fmt)
        if self.teacher is not None:
            self.teacher.to(memory_format=fmt)

    def release(self) -> None:
        """Back to the CPU, so that the next case's peak memory holds only its own script's nets."""
        for module in self.modules:
            module.to("cpu")


def make_step(nets: ScriptNets, case: Case, device: torch.device,
              cfg: TrainConfig | None = None) -> tuple[TrainStep, Optimisers]:
    """The step of the script's first phase (ours, or the original code's way: `OldWayStep`) and the run's
    optimisers for it (SGD, Adam, poly schedule, the fp16 loss scaler of the case's precision)."""
    cfg = replace(cfg or nets.cfg, amp=case.amp, channels_last=case.channels_last)
    phase = plan_phases(cfg)[0]
    if case.way == "ours":
        cls, objective = TrainStep, phase.objective
    else:
        cls, objective = OldWayStep, old_way_objective(phase.spec, knobs_of(cfg))
    optimisers = Optimisers(nets.net, nets.discs, cfg, device.type)
    optimisers.start_phase(phase.num_steps, objective.adversarial_levels)
    step = cls(nets.net, nets.discs, objective, device, amp=case.amp, teacher=nets.teacher,
               channels_last=case.channels_last, scale=optimisers.scale)
    return step, optimisers


class StepLoop:
    """One iteration of the training loop per call, as the engine runs it: the learning rates of the step, the
    batch-norm statistics kept, the gradients zeroed, the step, one host sync for the finiteness check, then
    the optimisers (or the step dropped). The old way: the optimisers, then every term read on the host, as
    the original code logged them. Returns whether every loss was finite; waits for the device."""

    def __init__(self, made: tuple[TrainStep, Optimisers], sources: list[dict], targets: list[dict],
                 device: torch.device, old_way: bool):
        self.step, self.optimisers = made
        self.sources, self.device, self.old_way = sources, device, old_way
        self.targets = targets if self.step.objective.uses_target else []
        self.statistics = RunningStatistics(unwrap(self.step.net))
        self.i = 0

    def __call__(self) -> bool:
        i = self.i % len(self.sources)
        self.optimisers.schedule(self.i)
        self.i += 1
        if not self.old_way:
            self.statistics.keep()
        self.optimisers.zero_grad()
        losses = self.step([self.sources[i]], [self.targets[i]] if self.targets else [])
        if self.old_way:
            self.optimisers.step()
            finite = all(math.isfinite(float(v)) for v in losses.values())
        else:
            bad, _ = step_status(losses)
            if bad is None:
                self.optimisers.step()
            else:
                self.optimisers.zero_grad()
                self.statistics.put_back()
            finite = bad is None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return finite


def count_flops(fn: Callable[[], object]) -> tuple[float, object]:
    """FLOPs (2 x multiply-adds of convolutions and matrix products, forward and backward) of one call."""
    with FlopCounterMode(display=False) as counter:
        out = fn()
    return float(counter.get_total_flops()), out


def timed_steps(loop: StepLoop, warmup: int, repeats: int, fits: Callable[[float], int],
                flops: list[float] | None = None, resident: Callable[[], list] | None = None) -> dict:
    """Warm up (at least one step), then time up to `repeats` steps (`fits(seconds of one step)` says how many
    the budget allows). Returns the raw figures.

    With `flops` given as an empty list, the first warm-up step's FLOPs are counted into it. With `resident`
    (a CPU), the last warm-up step's memory is counted tensor by tensor (`memory.cpu_peaks`); on CUDA the
    allocator's peaks are restarted after the warm-up (cuDNN's autotuning trials stay out of them).
    """
    finite, warm_times, peaks = True, [], {}
    for i in range(max(warmup, 1)):
        step: Callable[[], bool] = loop
        if i == 0 and flops is not None and not flops:
            def step(inner=step) -> bool:
                count, ok = count_flops(inner)
                flops.append(count)
                return ok
        if i == max(warmup, 1) - 1 and resident is not None:
            def step(inner=step) -> bool:
                found, ok = memory.cpu_peaks(inner, resident())
                peaks.update(found)
                return ok
        start = time.perf_counter()
        finite &= step()
        warm_times.append(time.perf_counter() - start)
    if loop.device.type == "cuda":
        memory.reset(loop.device)
    times = []
    for _ in range(min(fits(min(warm_times)), repeats)):
        start = time.perf_counter()
        finite &= loop()
        times.append(time.perf_counter() - start)
    if loop.device.type == "cuda":
        peaks = memory.cuda_peaks(loop.device)
    return {"times": times, "warmup_times": warm_times, "finite": bool(finite), **peaks}


def run_case(nets: ScriptNets, case: Case, device: torch.device, warmup: int, repeats: int,
             fits: Callable[[float], int], batches: tuple[list, list], flops: list[float] | None = None,
             compile_backend: str | None = None) -> dict:
    """Measure one case: step times, peak memory, finiteness. The nets go back to the CPU afterwards."""
    cfg = nets.cfg if case.batch is None else replace(nets.cfg, batch_size=case.batch)
    nets.place(device, case.channels_last)
    made = loop = optimizers = None
    try:
        memory.reset(device)
        if compile_backend:  # in place, as build_nets does: a process compiles its nets once
            compile_nets((nets.net, nets.teacher), backend=compile_backend)
        made = make_step(nets, case, device, cfg)
        optimizers = [made[1].net_opt, *made[1].disc_opts]
        loop = StepLoop(made, *batches, device, old_way=case.way != "ours")
        resident = None if device.type == "cuda" else (lambda: memory.resident_tensors(nets.modules, optimizers))
        raw = timed_steps(loop, warmup, repeats, fits, flops, resident)
        if not raw["times"]:
            return {"status": "cut", "note": "no timed step fitted in the budget after the warm-up", **raw}
        median = statistics.median(raw["times"])
        return {"status": "measured", **raw, "step_s": median, "step_s_min": min(raw["times"]),
                "images_per_s": cfg.batch_size / median}
    finally:
        made = loop = optimizers = None  # the optimiser states go with them, before the memory is released
        nets.release()
        memory.reset(device)


def script_nets(setting: ScriptSetting, folder: Path) -> tuple[ScriptNets | None, str]:
    """The script's nets, or None and why not (an architecture `model` does not know yet)."""
    try:
        return ScriptNets(setting, folder), ""
    except ConfigError as err:
        return None, str(err).split(";")[0]
