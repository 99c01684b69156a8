"""Device, precision, seeding and process-group plumbing, written once and switched by flags."""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from utils.errors import ConfigError

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    return device


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Autocast context for `--amp {off,bf16,fp16}` on any device type (a no-op for 'off')."""
    if amp not in AMP_DTYPES:
        raise ConfigError(f"--amp: expected one of {sorted(AMP_DTYPES)}, got {amp!r}")
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    if dtype is torch.float16 and device.type == "cpu":
        raise ConfigError("--amp fp16 needs a CUDA device; use --amp bf16 on the CPU")
    return torch.autocast(device_type=device.type, dtype=dtype)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel/DataParallel wrapper (or the module itself)."""
    return getattr(module, "module", module)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); with `deterministic`, ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - third-party code draws from the global generator
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def rng_state() -> dict:
    """Snapshot of every global random generator, for an exact resume."""
    state = {
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state() -> tuple:
    # As plain types and a tensor, so that `torch.load(weights_only=True)` can read it back.
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    return (str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))


def set_rng_state(state: dict) -> None:
    """Restore generators saved by `rng_state`."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def init_distributed(device_name: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(), resolve_device(device_name)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world_size, local_rank), device


def is_main_process() -> bool:
    """True unless torchrun started this process with a RANK other than 0 (usable before and after the group)."""
    return int(os.environ.get("RANK", "0")) == 0


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op in a single-process run)."""
    if info.enabled and dist.is_initialized():
        dist.barrier()


def shutdown_distributed(info: DistInfo) -> None:
    """Leave the process group if we joined one."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
