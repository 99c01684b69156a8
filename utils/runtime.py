"""Device, precision, seeding and process-group plumbing, written once and switched by flags."""
from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import os
import random
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from utils.errors import ConfigError, UserError

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DIST_TIMEOUT_MINUTES = 60  # rank 0 validates and writes checkpoints while the other ranks wait in a collective
# CUDA kernels with no deterministic variant that every training step runs (torch.use_deterministic_algorithms)
NONDETERMINISTIC_CUDA_OPS = ("the backward of bilinear upsampling (F.interpolate)",
                             "nll_loss (the segmentation and pseudo-label losses)")


def add_inference_flags(p: argparse.ArgumentParser, *, device: str, amp: str, channels_last: bool,
                        fold_bn: bool) -> None:
    """The flags that choose how a trained net runs (--device, --amp, --allow-slow-bf16, --channels-last,
    --fold-bn), with the calling script's defaults."""
    p.add_argument("--device", default=device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", choices=sorted(AMP_DTYPES), default=amp, help="autocast precision")
    p.add_argument("--allow-slow-bf16", action="store_true",
                   help="run --amp bf16 even on a CPU without native bf16 (emulated: up to hundreds of times slower)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=channels_last,
                   help="channels_last memory format (faster on the CPU together with --amp bf16)")
    p.add_argument("--fold-bn", action=argparse.BooleanOptionalAction, default=fold_bn,
                   help="fold each batch norm into the convolution before it (faster; the same output up to "
                        "float rounding)")


def resolve_device(name: str = "auto") -> torch.device:
    """Return the torch device for `--device` ('auto' picks CUDA when present, else CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"--device: expected auto, cpu, cuda or cuda:N, got {name!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
            raise ConfigError(f"--device {name}: this process sees {count} CUDA devices "
                              f"(cuda:0 to cuda:{count - 1}; CUDA_VISIBLE_DEVICES={visible})")
        # so that pinned-memory threads, autocast checks and stray allocations use GPU N, not GPU 0
        torch.cuda.set_device(device)
    return device


def uses_cuda(device_name: str) -> bool:
    """True when `--device` resolves to a CUDA device (no CUDA call beyond `is_available`)."""
    if device_name == "auto":
        return torch.cuda.is_available()
    try:
        return torch.device(device_name).type == "cuda"
    except RuntimeError:
        return False


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Autocast context for `--amp {off,bf16,fp16}` on any device type (a no-op for 'off')."""
    if amp not in AMP_DTYPES:
        raise ConfigError(f"--amp: expected one of {sorted(AMP_DTYPES)}, got {amp!r}")
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    if dtype is torch.float16 and device.type == "cpu":
        raise ConfigError("--amp fp16 needs a CUDA device; use --amp bf16 on the CPU")
    check_amp_device(device, amp)
    return torch.autocast(device_type=device.type, dtype=dtype)


def compile_nets(nets: Iterable[nn.Module | None], enabled: bool = True, backend: str = "inductor") -> None:
    """`--compile`: compile each net's forward with `torch.compile`, in place (`nn.Module.compile`), so that
    its class, state-dict keys, checkpoints and DDP wrapping stay as they are. None entries are skipped;
    nothing happens unless `enabled`. The first steps compile (a graph per input size and precision)."""
    if not enabled:
        return
    for net in nets:
        if net is not None:
            net.compile(backend=backend)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel/DataParallel wrapper (or the module itself)."""
    return getattr(module, "module", module)


@functools.cache
def check_amp_device(device: torch.device, amp: str) -> None:
    """Warn (once per device) when `--amp bf16` runs on a GPU without native bf16 (compute capability < 8)."""
    if amp != "bf16" or device.type != "cuda":
        return
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        warnings.warn(f"--amp bf16 on {torch.cuda.get_device_name(device)} (compute capability {major}.{minor}): "
                      "this GPU has no native bf16, its convolutions fall back to slow kernels; "
                      "use --amp fp16 (with loss scaling) or --amp off", RuntimeWarning, stacklevel=3)


def seed_everything(seed: int, deterministic: bool = False, device: torch.device | None = None) -> None:
    """Seed Python, NumPy and torch (all devices); with `deterministic`, ask torch for deterministic kernels.

    On a CPU that makes runs bit-identical. On CUDA it fixes cuDNN's and cuBLAS's choices, but some ops the
    step needs have no deterministic CUDA kernel (NONDETERMINISTIC_CUDA_OPS): they still run, with one
    warning that says so, and GPU runs are close, not bitwise equal.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - third-party code draws from the global generator
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: raising would make the flag unusable on a GPU, where these ops run at every step
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        if device is not None and device.type == "cuda":
            warnings.warn("--deterministic on CUDA: cuDNN and cuBLAS are pinned to deterministic algorithms, but "
                          + " and ".join(NONDETERMINISTIC_CUDA_OPS) + " have no deterministic CUDA kernel: GPU runs "
                          "are NOT bitwise reproducible (CPU runs are)", RuntimeWarning, stacklevel=2)
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def rng_state(device: torch.device | None = None) -> dict:
    """Snapshot of every global random generator, for an exact resume.

    CUDA: the generator of the run's GPU only (`device`; without it, the current GPU's once CUDA is in
    use), none for a run on the CPU.
    """
    state = {
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if device is not None:
        if device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(device)
    elif torch.cuda.is_available() and torch.cuda.is_initialized():
        # this process's GPU only: a resume may see fewer GPUs (one per task, or a smaller node)
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _numpy_state() -> tuple:
    # As plain types and a tensor, so that `torch.load(weights_only=True)` can read it back.
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    return (str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Restore generators saved by `rng_state`; the CUDA one on the run's GPU (`device`) only.

    A run on the CPU (`device` cpu) leaves every GPU untouched, whatever the checkpoint holds. An older
    checkpoint holding one CUDA state per GPU gives this GPU the entry of its index (the first entry
    when the list is shorter). Without `device`, the current GPU, when CUDA is available.
    """
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    saved = state.get("cuda")
    if saved is None or (device is not None and device.type != "cuda"):
        return
    if device is None:
        if not torch.cuda.is_available():
            return
        device = torch.device("cuda", torch.cuda.current_device())
    index = torch.cuda.current_device() if device.index is None else device.index
    if not isinstance(saved, torch.Tensor):  # older checkpoints: one state per GPU the saving process saw
        if not saved:
            return
        saved = saved[index] if index < len(saved) else saved[0]
    torch.cuda.set_rng_state(saved, index)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True on the process that writes logs, bars and checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when several processes train together."""
        return self.world_size > 1


def init_distributed(device_name: str = "auto",
                     timeout_minutes: float = DIST_TIMEOUT_MINUTES) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); else a single process.

    `timeout_minutes` bounds how long a rank waits in a collective (while rank 0 validates or saves).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(), resolve_device(device_name)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device("cuda" if uses_cuda(device_name) else device_name)
    if device.type == "cuda":
        local_world_size = os.environ.get("LOCAL_WORLD_SIZE")  # set by torchrun, not by per-task schedulers
        device = torch.device("cuda", local_gpu(local_rank, int(local_world_size) if local_world_size else None))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return DistInfo(rank, world_size, local_rank), device


def local_gpu(local_rank: int, local_world_size: int | None = None) -> int:
    """The GPU index of the process with `local_rank`: that rank's GPU, or the only one this process sees.

    `local_world_size` (torchrun's LOCAL_WORLD_SIZE: processes on this node) larger than the number of
    visible GPUs is a `ConfigError` on every rank: several ranks would share a GPU, which NCCL refuses
    only later ("Duplicate GPU detected"), and ranks beyond the GPUs would fail while the others wait.
    """
    count = torch.cuda.device_count()
    if local_world_size is not None and local_world_size > count:
        raise ConfigError(f"LOCAL_WORLD_SIZE {local_world_size}: {local_world_size} processes on this node, but this "
                          f"process sees {count} CUDA device{'s' if count != 1 else ''} "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}) and two ranks "
                          f"cannot share a GPU: start at most {count} processes per node (torchrun "
                          f"--nproc_per_node {count}), or train on the CPU with --device cpu")
    if count == 1:  # one GPU per process (e.g. srun --gpus-per-task 1): each task sees its own as cuda:0
        return 0
    if local_rank >= count:
        raise ConfigError(f"LOCAL_RANK {local_rank} but this process sees {count} CUDA devices "
                          f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): start at most "
                          f"{count} processes per node (torchrun --nproc_per_node {count})")
    return local_rank


def is_main_process() -> bool:
    """True unless torchrun started this process with a RANK other than 0 (usable before and after the group)."""
    return int(os.environ.get("RANK", "0")) == 0


def once_per_node(info: DistInfo, device: torch.device, action: Callable[[], object]) -> None:
    """Run `action` on local rank 0 of every node while the node's other processes wait, e.g. a download that
    they then find in the node's cache. A `UserError` on any node stops every process: its own error where it
    happened, a one-line `ConfigError` elsewhere. Outside torchrun, `action` simply runs."""
    if not info.enabled:
        action()
        return
    error = None
    if info.local_rank == 0:
        try:
            action()
        except UserError as err:
            error = err
    failed = torch.tensor([0.0 if error is None else 1.0], device=device)
    dist.all_reduce(failed, op=dist.ReduceOp.MAX)
    if error is not None:
        raise error
    if failed.item() > 0:
        raise ConfigError("stopped: local rank 0 of a node failed (its one-line error says why)")


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op in a single-process run)."""
    if info.enabled and dist.is_initialized():
        dist.barrier()


def shutdown_distributed(info: DistInfo) -> None:
    """Leave the process group if we joined one."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
