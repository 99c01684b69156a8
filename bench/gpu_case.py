"""Cases of the GPU check that run in a process of their own (bench/gpu.py starts them with a time limit).

    python -m bench.gpu_case compile --script teacher [--amp bf16] [--device cuda] [--quick] --json OUT
    python -m bench.gpu_case deterministic --script student [--device cuda] [--quick] --json OUT

compile: the script's eager step, then the same step with its nets compiled in place (utils.runtime.compile_nets,
what `--compile` does), in one process: the compiled step time, the time its first steps spent compiling, and
the ratio. A process of its own, because compilation can take minutes: the parent stops it when the budget
runs out, and a compiled net is never handed back to eager cases.
deterministic: two runs of `--deterministic` (seeding, nets built, `STEPS` steps) compared bit for bit, and
the ops that torch reports as having no deterministic kernel. A process of its own, because the
deterministic settings (cuBLAS's workspace among them) must be in place before the first CUDA call.
"""
from __future__ import annotations

import json
import re
import sys
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from bench.steps import SCRIPT, Case, ScriptNets, StepLoop, make_step, quick_setting, run_case, synthetic_batches
from utils.cli import ArgumentParser, non_negative_int, positive_int, run_cli
from utils.files import write_text_atomic
from utils.runtime import AMP_DTYPES, resolve_device, seed_everything

SEED = 0
STEPS = 2
NO_KERNEL = "does not have a deterministic implementation"  # how torch's warning names such an op


def compile_case(key: str, amp: str, device: torch.device, quick: bool, backend: str, warmup: int,
                 repeats: int, folder: Path) -> dict:
    """Eager, then compiled: the same script, precision and batches in this process."""
    setting = quick_setting(SCRIPT[key]) if quick else SCRIPT[key]
    seed_everything(SEED, False, device)
    nets = ScriptNets(setting, folder)
    batches = synthetic_batches(setting, setting.batch, pin=device.type == "cuda")

    def every(_seconds: float) -> int:
        return repeats

    eager = run_case(nets, Case(key, amp), device, warmup, repeats, every, batches)
    compiled = run_case(nets, Case(key, amp, compile=True), device, max(warmup, 2), repeats, every, batches,
                        compile_backend=backend)
    out = {"script": key, "precision": "fp32" if amp == "off" else amp, "backend": backend,
           "batch": setting.batch, "eager": eager, "compiled": compiled}
    if eager["status"] == compiled["status"] == "measured":
        warm = compiled["warmup_times"]
        out.update({"compile_s": sum(warm) - len(warm) * compiled["step_s"], "first_step_s": warm[0],
                    "step_s": compiled["step_s"], "eager_step_s": eager["step_s"],
                    "speedup": eager["step_s"] / compiled["step_s"]})
    return out


def _op_name(message: str) -> str:
    """The op named by torch's "... does not have a deterministic implementation" warning."""
    match = re.match(r"\s*(\S+) " + NO_KERNEL, message)
    return match.group(1) if match else message.splitlines()[0][:160]


def deterministic_case(key: str, device: torch.device, quick: bool, folder: Path, steps: int = STEPS) -> dict:
    """Two seeded runs of `steps` fp32 steps of the script with --deterministic's settings, compared bit for bit."""
    setting = quick_setting(SCRIPT[key]) if quick else SCRIPT[key]
    runs, ops = [], set()
    for _ in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            seed_everything(SEED, True, device)
            nets = ScriptNets(setting, folder)
            nets.place(device, channels_last=False)
            loop = StepLoop(make_step(nets, Case(key), device), *synthetic_batches(setting, setting.batch,
                                                                                 pin=device.type == "cuda"),
                            device, old_way=False)
            finite = all(loop() for _ in range(steps))
        ops.update(_op_name(str(w.message)) for w in caught if NO_KERNEL in str(w.message))
        state = {f"{i}.{k}": v.detach().cpu().clone() for i, m in enumerate(nets.modules)
                 for k, v in m.state_dict().items()}
        runs.append((state, finite))
        nets.release()
    (first, finite_a), (second, finite_b) = runs
    differing = [k for k in first if not torch.equal(first[k], second[k])]
    max_diff = max((float((first[k].double() - second[k].double()).abs().max()) for k in differing
                    if first[k].is_floating_point()), default=0.0)
    torch.use_deterministic_algorithms(False)
    return {"script": key, "precision": "fp32", "steps": steps, "batch": setting.batch,
            "bitwise_equal": not differing, "tensors": len(first), "tensors_differing": len(differing),
            "max_abs_diff": max_diff, "finite": finite_a and finite_b,
            "nondeterministic_ops": sorted(ops)}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one case and write its JSON."""
    parser = ArgumentParser(prog="python -m bench.gpu_case", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=("compile", "deterministic"))
    parser.add_argument("--script", choices=tuple(SCRIPT), required=True)
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES), default="bf16")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--warmup", type=non_negative_int, default=2)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--steps", type=positive_int, default=STEPS, help="deterministic: steps per run")
    parser.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        if args.kind == "compile":
            result = compile_case(args.script, args.amp, device, args.quick, args.backend, args.warmup,
                                  args.repeats, Path(tmp))
        else:
            result = deterministic_case(args.script, device, args.quick, Path(tmp), args.steps)
    write_text_atomic(args.json, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
