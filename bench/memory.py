"""Peak memory of a training step: the CUDA allocator's peaks on a GPU, a tensor-by-tensor count on a CPU.

On CUDA, `peak` is `torch.cuda.max_memory_allocated` (tensors) and `max_memory_reserved` (what the caching
allocator held: what must fit on the card, with the CUDA context on top), both reset before a case.
A CPU has no such counter; there the peak is the bytes of the resident tensors (weights, buffers,
optimiser states) plus the peak of the storages a step creates, counted op by op (`LiveStorageBytes`).
"""
from __future__ import annotations

import gc
from collections.abc import Callable, Iterable

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

GIB = 2**30


class LiveStorageBytes(TorchDispatchMode):
    """Peak bytes of the storages created under this mode and still alive (views of one storage count once)."""

    def __init__(self) -> None:
        super().__init__()
        self.peak = 0
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # drop the storages freed since the last op first: a new one may reuse a freed address
        self._live = {ptr: entry for ptr, entry in self._live.items() if not entry[0].expired()}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                ptr = storage.data_ptr()
                if ptr and ptr not in self._live:
                    self._live[ptr] = (StorageWeakRef(storage), storage.nbytes())
        self.peak = max(self.peak, sum(n for _, n in self._live.values()))
        return out


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors`."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def resident_tensors(modules: Iterable[torch.nn.Module | None],
                     optimizers: Iterable[torch.optim.Optimizer]) -> list[torch.Tensor]:
    """The tensors a step keeps between steps: parameters, buffers, optimiser states (not the gradients: a
    step drops them first, `Optimisers.zero_grad`, and makes them anew, under the counting mode)."""
    out: list[torch.Tensor] = []
    for module in modules:
        if module is None:
            continue
        out += list(module.parameters()) + list(module.buffers())
    for opt in optimizers:
        for state in opt.state.values():
            out += [v for v in state.values() if isinstance(v, torch.Tensor) and v.device.type != "meta"]
    return out


def reset(device: torch.device) -> None:
    """Free cached blocks and restart the peaks (CUDA); collect garbage (any device)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def cuda_peaks(device: torch.device) -> dict[str, float]:
    """The allocator's peaks since the last `reset`, in GiB."""
    return {"peak_alloc_gib": torch.cuda.max_memory_allocated(device) / GIB,
            "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB}


def cpu_peaks(step: Callable[[], object], resident: list[torch.Tensor]) -> tuple[dict[str, float], object]:
    """The bytes of `resident` (counted before the call) plus the live-storage peak of one call of `step`, in GiB
    (allocated = reserved on a CPU); and what `step` returned."""
    before = tensor_bytes(resident)
    with LiveStorageBytes() as mode:
        out = step()
    total = (before + mode.peak) / GIB
    return {"peak_alloc_gib": total, "peak_reserved_gib": total}, out


def cuda_context_gib(device: torch.device) -> float:
    """Device memory in use that the caching allocator does not hold (CUDA context, library handles), in GiB."""
    free, total = torch.cuda.mem_get_info(device)
    return (total - free - torch.cuda.memory_reserved(device)) / GIB
