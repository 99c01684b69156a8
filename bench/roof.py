"""The machine's own matrix-product roof, on a CPU or a CUDA GPU, measured in the calling process.

A figure of achieved speed means little across machines; as a fraction of this roof, measured in the same
process, it travels. On CUDA, "tf32" is float32 with the TensorFloat-32 matrix units (what cuDNN uses for
float32 convolutions by default, `torch.backends.cudnn.allow_tf32`), "fp32" the plain float32 product.
"""
from __future__ import annotations

import contextlib
import time

import torch

REPEATS = 10                 # timed products per figure, after WARMUP; the roof is the best of them
WARMUP = 3
SEED = 0


def number_types(device: torch.device) -> tuple[str, ...]:
    """The number types whose roof is measured on `device`."""
    return ("fp32", "tf32", "bf16", "fp16") if device.type == "cuda" else ("fp32", "bf16")


@contextlib.contextmanager
def _tf32(enabled: bool):
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_roof(device: torch.device, kind: str, n: int, repeats: int = REPEATS, warmup: int = WARMUP) -> float:
    """TFLOP/s of an (n, n) x (n, n) matrix product of number type `kind` on `device` (best of `repeats`)."""
    dtype = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[kind]
    gen = torch.Generator().manual_seed(SEED)  # random operands: zeros run faster than real data
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    best = float("inf")
    with _tf32(kind == "tf32"):
        for i in range(warmup + repeats):
            _sync(device)
            start = time.perf_counter()
            a @ b
            _sync(device)
            if i >= warmup:
                best = min(best, time.perf_counter() - start)
    del a, b
    return 2 * n**3 / best / 1e12


def measure_roof(device: torch.device, n: int) -> dict[str, float]:
    """TFLOP/s of each number type's (n, n) matrix product on `device`, now."""
    return {kind: matmul_roof(device, kind, n) for kind in number_types(device)}


def step_number_type(device: torch.device, amp: str) -> str:
    """The number type of the matrix units a training step with `--amp amp` mostly runs on."""
    if amp != "off":
        return amp
    if device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "fp32"
