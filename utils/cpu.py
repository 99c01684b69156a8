"""What this CPU runs fast, from torch's own queries: vector width, native bf16, int8 dot products, AMX.

The answer honours the switches that make a bigger machine run a smaller one's kernels:
`ATEN_CPU_CAPABILITY` (PyTorch's own kernels: default, avx2, avx512) and `ONEDNN_MAX_CPU_ISA`
(or its older name `DNNL_MAX_CPU_ISA`; oneDNN's convolutions and bf16 matrix products). Under
either, this module answers as the machine they emulate: `ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2` on an AVX-512 CPU answers "AVX2, no bf16, no VNNI". onnxruntime has no
such switch: its kernels (MLAS) are chosen from the cpuid instruction when it loads, so
`onnxruntime_isa` stays the processor's own level (docs/deploy.md says what that means for a table
measured under the switches).
"""
from __future__ import annotations

import functools
import os
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from utils.errors import ConfigError

# x86 levels, each implying the ones before it as far as these nets care (any AVX-512 CPU has AVX2 and FMA)
LEVELS = ("baseline", "avx2", "avx2_vnni", "avx512", "avx512_vnni", "avx512_bf16", "amx")
LEVEL_NAMES = {"baseline": "SSE (no AVX2)", "avx2": "AVX2", "avx2_vnni": "AVX2 with AVX-VNNI", "avx512": "AVX-512",
               "avx512_vnni": "AVX-512 with VNNI", "avx512_bf16": "AVX-512 with VNNI and BF16",
               "amx": "AVX-512 with AMX"}
# torch.backends.cpu.get_cpu_capability() -> the highest level PyTorch's own kernels use
ATEN_CAPS = {"DEFAULT": "baseline", "AVX2": "avx2", "AVX512": "amx"}
# ONEDNN_MAX_CPU_ISA values (oneDNN's names, case-insensitive) -> the highest level oneDNN may use
ONEDNN_CAPS = {"SSE41": "baseline", "AVX": "baseline", "AVX2": "avx2", "AVX2_VNNI": "avx2_vnni",
               "AVX2_VNNI_2": "avx2_vnni", "AVX512_CORE": "avx512", "AVX512_CORE_VNNI": "avx512_vnni",
               "AVX512_CORE_BF16": "avx512_bf16", "AVX512_CORE_FP16": "avx512_bf16", "AVX10_1_512": "avx512_bf16",
               "AVX10_2_512": "avx512_bf16", "AVX512_CORE_AMX": "amx", "AVX10_1_512_AMX": "amx",
               "AVX512_CORE_AMX_FP16": "amx", "AVX10_1_512_AMX_FP16": "amx", "AVX10_2_512_AMX_2": "amx",
               "DEFAULT": "amx", "ALL": "amx"}
OVERRIDES = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
INT8_GRAPH = "the int8 graph (export_onnx.py --int8, then predict.py --onnx NAME.int8.onnx)"


@dataclass(frozen=True)
class CpuInfo:
    """What this CPU runs fast, as the libraries that run the nets see it."""

    name: str
    architecture: str
    level: str            # one of LEVELS on x86 (after the overrides); the architecture's name elsewhere
    vector_bits: int      # width of PyTorch's vector kernels
    bf16: bool            # native bf16 arithmetic (AVX-512 BF16, AMX, or Arm's BF16) that oneDNN uses
    int8_dot: str         # "VNNI" (one instruction per 4 multiply-adds), else the instructions that take three
    amx: bool             # Intel AMX tiles
    onnxruntime_level: str  # what onnxruntime's kernels use: the processor's own level, whatever the overrides
    threads: int
    overrides: dict

    def summary(self) -> str:
        """One line: the CPU, its vector width, bf16, int8 and AMX, and the overrides in force."""
        described = LEVEL_NAMES.get(self.level, self.level)
        line = (f"cpu: {self.name}, {self.threads} threads: {described} ({self.vector_bits}-bit vectors), "
                f"bf16 {'native' if self.bf16 else 'NOT native'}, "
                f"int8 multiply-adds {self.int8_dot}, "
                f"{'AMX' if self.amx else 'no AMX'}")
        if self.overrides:
            line += (" [" + ", ".join(f"{k}={v}" for k, v in self.overrides.items()) + ": PyTorch and oneDNN run "
                     f"as this machine; onnxruntime has no such switch and runs the processor's own kernels, "
                     f"{LEVEL_NAMES.get(self.onnxruntime_level, self.onnxruntime_level)}]")
        return line

    def to_dict(self) -> dict:
        """JSON-ready fields (for benchmark tables)."""
        return asdict(self)

    def features(self) -> dict:
        """What the CPU runs fast, JSON-ready, without its name, threads and overrides (a run's environment)."""
        return {k: v for k, v in asdict(self).items() if k not in ("name", "threads", "overrides")}


def hardware_level(caps: Mapping[str, object]) -> str:
    """The x86 level of a `torch.cpu.get_capabilities()` mapping (cpuinfo's view of cpuid)."""
    if caps.get("avx512_f") and caps.get("amx_tile") and (caps.get("amx_bf16") or caps.get("amx_int8")):
        return "amx"
    if caps.get("avx512_bf16"):
        return "avx512_bf16"
    if caps.get("avx512_vnni"):
        return "avx512_vnni"
    if caps.get("avx512_f") and caps.get("avx512_bw") and caps.get("avx512_vl") and caps.get("avx512_dq"):
        return "avx512"
    if caps.get("avx2") and caps.get("avx_vnni"):
        return "avx2_vnni"
    if caps.get("avx2") and caps.get("fma3"):
        return "avx2"
    return "baseline"


def detect(caps: Mapping[str, object], aten_capability: str, mkldnn_bf16: bool, env: Mapping[str, str],
           threads: int) -> CpuInfo:
    """A `CpuInfo` from the libraries' answers (kept apart from `cpu_info` so that any machine can be described)."""
    in_force = overrides(env)
    name = str(caps.get("cpu_name") or "unknown CPU")
    arch = str(caps.get("architecture", "unknown"))
    if arch not in ("x86_64", "x86"):
        vector = int(caps.get("sve_max_length") or 0) * 8 or 128
        return CpuInfo(name, arch, aten_capability.lower(), vector, bool(caps.get("bf16")) and mkldnn_bf16,
                       "dot" if caps.get("dot") or caps.get("i8mm") else "NEON", False, arch, threads, in_force)
    hardware = hardware_level(caps)
    caps_by_override = [ATEN_CAPS.get(aten_capability.upper(), "amx")]
    isa = env.get("ONEDNN_MAX_CPU_ISA") or env.get("DNNL_MAX_CPU_ISA")
    if isa:
        caps_by_override.append(ONEDNN_CAPS.get(isa.upper(), "amx"))
    level = LEVELS[min(LEVELS.index(hardware), *(LEVELS.index(c) for c in caps_by_override))]
    rank = LEVELS.index(level)
    vector = 512 if rank >= LEVELS.index("avx512") else 256 if rank >= LEVELS.index("avx2") else 128
    if level == "avx2_vnni" or rank >= LEVELS.index("avx512_vnni"):
        int8 = "VNNI"
    else:
        int8 = {"avx512": "AVX-512BW, no VNNI", "avx2": "AVX2, no VNNI"}.get(level, "SSE4.1, no VNNI")
    bf16 = rank >= LEVELS.index("avx512_bf16") and mkldnn_bf16
    return CpuInfo(name, arch, level, vector, bf16, int8, level == "amx", hardware, threads, in_force)


def cpu_model() -> str | None:
    """The CPU's model name (Linux /proc/cpuinfo, else `platform.processor()`), or None when unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def overrides(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The switches in `env` (default: this process's environment) that make PyTorch or oneDNN run a smaller
    machine's kernels."""
    env = os.environ if env is None else env
    return {name: env[name] for name in OVERRIDES if env.get(name)}


@functools.cache
def cpu_info() -> CpuInfo:
    """This process's CPU, as PyTorch, oneDNN and onnxruntime see it (computed once: the libraries choose
    their kernels once, when the process starts)."""
    caps = dict(torch.cpu.get_capabilities())
    caps["cpu_name"] = cpu_model() or caps.get("cpu_name")
    return detect(caps, torch.backends.cpu.get_cpu_capability(),
                  bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()), os.environ, torch.get_num_threads())


def native(info: CpuInfo, number_type: str) -> bool:
    """Whether this CPU has instructions for `number_type` ("fp32", "bf16", "int8") arithmetic.

    Only bf16 can lack them: without them oneDNN emulates it, hundreds of times slower than fp32 on an
    AVX2 CPU. int8 always runs on integer vector instructions (VNNI: one instruction per four
    multiply-adds; AVX2 or SSE4.1: three), so the int8 graph is never a slow path, only a smaller gain.
    """
    return info.bf16 if number_type == "bf16" else True


def check_amp(device: torch.device, amp: str, allow_slow_bf16: bool, *, deploys: bool = False) -> None:
    """Stop (`ConfigError`, one line) before `--amp bf16` runs emulated on a CPU without native bf16.

    The message names the faster choice here: fp32, and with `deploys` the int8 graph as well.
    """
    if device.type != "cpu" or amp != "bf16" or allow_slow_bf16:
        return
    info = cpu_info()
    if not native(info, "bf16"):
        faster = "--amp off (fp32)" + (f", or for the fastest form here {INT8_GRAPH}" if deploys else "")
        raise ConfigError(f"--amp bf16: this CPU ({LEVEL_NAMES.get(info.level, info.level)}) has no native bf16 "
                          f"instructions, so bf16 autocast would run emulated, up to hundreds of times slower than "
                          f"fp32; use {faster}, or pass --allow-slow-bf16 to run it anyway")


def settle_form(device: torch.device, amp: str, allow_slow_bf16: bool, choice: str, *, show: bool = True,
                deploys: bool = False) -> None:
    """`check_amp`, then (with `show`) `announce` the form the command runs: one call per command."""
    check_amp(device, amp, allow_slow_bf16, deploys=deploys)
    if show:
        announce(device, choice)


def torch_form(amp: str = "off", channels_last: bool = False, fold_bn: bool = False) -> str:
    """How a PyTorch net runs, in words: 'torch fp32', 'torch bf16 autocast + channels_last', ..."""
    parts = ["torch " + ("fp32" if amp == "off" else f"{amp} autocast")]
    parts += ["channels_last"] * channels_last + ["folded batch norms"] * fold_bn
    return " + ".join(parts)


def announce(device: torch.device, choice: str) -> None:
    """Print this CPU's capabilities (once per process) and the form the command runs (nothing on a GPU)."""
    if device.type != "cpu":
        return
    info = cpu_info()
    if not _announced:
        print(info.summary(), flush=True)
        _announced.append(info)
    print(f"  running: {choice}; fastest here: {fastest_form(info)}", flush=True)


_announced: list[CpuInfo] = []  # a process that runs several commands (demo.py) describes its CPU once


def fastest_form(info: CpuInfo) -> str:
    """The form to deploy on this CPU, and the fastest PyTorch form."""
    torch_best = (f"torch {'bf16 autocast' if info.bf16 else 'fp32'} with channels_last and folded batch norms "
                  f"({'--amp bf16 ' if info.bf16 else ''}--channels-last --fold-bn)")
    return f"{INT8_GRAPH}; in PyTorch, {torch_best}"
