"""The GPU check: every training script's real step at the paper's sizes, its speed, memory and numerics, in one run.

    python benchmark.py --gpu [--budget 300] [--out runs/gpu_check] [--sections steps,memory,...] [--scripts ...]
    python benchmark.py --gpu --device cpu --quick      # the same code path on tiny sizes (the tests run it)

Writes OUT/gpu_check.json and OUT/gpu_check.md (after every case, so a run stopped from outside keeps what it
measured) and prints the Markdown at the end. Sections, in the order of their priority tiers (the budget cuts
the last ones first, never overruns: a case starts only when its estimate fits in what is left, and timed
steps stop when the next would not fit):
  steps          each script (bench/steps.py SCRIPTS): fp32, bf16, bf16 + channels_last, the original
                 code's way in fp32; then fp16; last, fp32 and fp16 with channels_last
  memory         each script's peak memory at a second batch (fp32, bf16): the batch each script reaches
                 within 24, 40 and 80 GB, from a linear fit of the peaks at the two batches
  eval           eval_cs.py's pipeline at the evaluation protocol's sizes (bench/evalspeed.py)
  deterministic  two --deterministic runs of the student's step compared bit for bit (own process)
  tests          the tests marked `gpu` (tests/test_cuda_real.py: the mocked CUDA paths, for real)
  compile        --compile (torch.compile of the nets): compile time and compiled step, each script in a
                 process of its own that is stopped when the budget runs out
The machine's matrix-product roof is measured at the start and, when time is left, at the end; each step's
achieved TFLOP/s is given as a fraction of the best of the two (bench/roof.py).
--quick runs the same code on the DAKD script at a 16th of the sizes and batch 1 (fp32, bf16 with
channels_last, the original code's way, fp16, memory at batch 2 in fp32), one repeat each, the student's
determinism, and its compilation with torch.compile's `eager` backend (inductor takes minutes on a CPU).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench import memory
from bench.evalspeed import EvalVariant, eval_throughput, make_val_frames, student
from bench.gpu_report import format_markdown, summarize
from bench.roof import measure_roof, step_number_type
from bench.steps import (
    SCRIPTS,
    Case,
    ScriptNets,
    quick_setting,
    run_case,
    script_nets,
    second_batch,
    synthetic_batches,
)
from utils.errors import ConfigError
from utils.files import write_text_atomic
from utils.runtime import resolve_device, seed_everything

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("steps", "memory", "eval", "deterministic", "tests", "compile")
SEED = 0
GPU_TESTS = "tests/test_cuda_real.py"


@dataclass(frozen=True)
class Settings:
    """How much each figure measures, on a GPU or in a --quick run."""

    repeats: int
    warmup: int
    budget_s: float
    reserve_s: float              # kept back for the end roof and the files
    roof_n: int
    first_step_guess_s: float     # a script's step before any of its cases ran
    eval_images: int
    eval_input: tuple[int, int]   # W, H fed to the net
    eval_label: tuple[int, int]   # W, H of the frames and labels (scored at full size)
    eval_workers: tuple[int, ...]
    scripts: tuple[str, ...]      # the training scripts measured (bench/steps.py SCRIPTS keys)
    compile_backend: str
    compile_scripts: tuple[str, ...]
    min_s: dict = field(default_factory=dict)   # the least time left to start a subprocess section
    max_s: dict = field(default_factory=dict)   # the most one subprocess of a section may take
    deterministic_steps: int = 2
    quick: bool = False


GPU = Settings(repeats=5, warmup=2, budget_s=300, reserve_s=8, roof_n=8192, first_step_guess_s=4.0,
               eval_images=16, eval_input=(1024, 512), eval_label=(2048, 1024), eval_workers=(2, 8),
               scripts=tuple(s.key for s in SCRIPTS), compile_backend="inductor",
               compile_scripts=tuple(s.key for s in SCRIPTS),
               min_s={"compile": 90, "deterministic": 30, "tests": 40, "eval": 20}, max_s={"compile": 150})
QUICK = Settings(repeats=1, warmup=1, budget_s=900, reserve_s=1, roof_n=256, first_step_guess_s=1.0,
                 eval_images=2, eval_input=(64, 32), eval_label=(128, 64), eval_workers=(0,),
                 scripts=("dakd",), compile_backend="eager", compile_scripts=("student",),
                 min_s={"compile": 5, "deterministic": 5, "tests": 5, "eval": 2}, deterministic_steps=1,
                 quick=True)


class Budget:
    """Seconds left until the deadline; what fits in them (keeping `reserve` back)."""

    def __init__(self, seconds: float, reserve: float, clock: Callable[[], float] = time.monotonic):
        self.clock, self.reserve = clock, reserve
        self.start = clock()
        self.deadline = self.start + seconds

    def left(self) -> float:
        """Seconds to the deadline."""
        return self.deadline - self.clock()

    def elapsed(self) -> float:
        """Seconds since the start."""
        return self.clock() - self.start

    def allows(self, seconds: float) -> bool:
        """Whether `seconds` more fit before the deadline, the reserve kept."""
        return self.left() - self.reserve >= seconds

    def steps(self, step_s: float) -> int:
        """How many steps of `step_s` seconds fit."""
        return max(0, int((self.left() - self.reserve) / max(step_s, 1e-6)))


@dataclass
class Item:
    """One entry of the plan: a section, a label, what it runs, and its time estimate (seconds)."""

    section: str
    label: str
    run: Callable[[], None]
    estimate: Callable[[], float]


class Check:
    """The state of one GPU check: settings, device, budget, the results so far, and where they are written."""

    def __init__(self, device: torch.device, settings: Settings, budget: Budget, out: Path, folder: Path,
                 sections: tuple[str, ...]):
        self.device, self.settings, self.budget, self.out, self.folder = device, settings, budget, out, folder
        self.sections = sections
        self.nets: dict[str, ScriptNets | None] = {}
        self.skip_note: dict[str, str] = {}
        self.batches: dict[tuple[str, int], tuple] = {}
        self.step_s: dict[str, float] = {}           # slowest measured step of each script
        self.case_overhead_s: dict[str, float] = {}  # a case's time beyond its steps
        self.flops: dict[str, list[float]] = {}
        self.eval_root: Path | None = None
        self.eval_net = None
        self.eval_s = 0.0
        self.result: dict = {"config": machine_info(device, settings, budget, sections), "roof_start": {},
                             "roof_end": {}, "steps": [], "eval": [], "compile": [], "deterministic": None,
                             "tests": None, "cut": [], "failed": []}

    # --- settings of a case ------------------------------------------------------------------------
    def setting(self, key: str):
        """The script's sizes and batch (tiny with --quick)."""
        base = next(s for s in SCRIPTS if s.key == key)
        return quick_setting(base) if self.settings.quick else base

    def script_nets(self, key: str) -> ScriptNets | None:
        """The script's nets, built on first use (None when `model` does not know its architecture)."""
        if key not in self.nets:
            nets, note = script_nets(self.setting(key), self.folder)
            self.nets[key] = nets
            if nets is None:
                self.skip_note[key] = note
        return self.nets[key]

    def script_batches(self, key: str, batch: int) -> tuple:
        """Synthetic source and target batches of the script's sizes (made once per batch size)."""
        if (key, batch) not in self.batches:
            self.batches[key, batch] = synthetic_batches(self.setting(key), batch, self.device.type == "cuda")
        return self.batches[key, batch]

    # --- the plan ----------------------------------------------------------------------------------
    def plan(self) -> list[Item]:
        """Every item in priority order (see the module's docstring)."""
        keys = list(self.settings.scripts)
        full = not self.settings.quick  # --quick: the representative cases only (same code, fewer repeats of it)
        tier1 = [c for k in keys for c in (Case(k), *([Case(k, "bf16")] if full else []), Case(k, "bf16", True),
                                           Case(k, way="old way"))]
        tier2 = [Case(k, "fp16") for k in keys]
        memory_cases = [Case(k, amp, batch=second_batch(self.setting(k).batch)) for k in keys
                        for amp in (("off", "bf16") if full else ("off",))]
        last = [c for k in keys for c in (Case(k, channels_last=True), Case(k, "fp16", True))] if full else []
        items = [self.step_item(c, "steps") for c in tier1 + tier2]
        items += [self.step_item(c, "memory") for c in memory_cases]
        low = ("bf16", "fp16") if self.device.type == "cuda" else ("bf16",)
        variants = [EvalVariant(workers=self.settings.eval_workers[0])]
        variants += [EvalVariant(amp, True, True, w) for amp in low for w in self.settings.eval_workers[:1]]
        variants += [EvalVariant(low[0], True, True, w) for w in self.settings.eval_workers[1:]]
        items += [self.eval_item(v) for v in variants]
        items.append(self.subprocess_item("deterministic", "student"))  # the GPU check and --quick alike
        items.append(self.tests_item())
        first, *others = [self.subprocess_item("compile", k) for k in self.settings.compile_scripts]
        items += [first] + [self.step_item(c, "steps") for c in last] + others
        return [item for item in items if item.section in self.sections]

    # --- step cases --------------------------------------------------------------------------------
    def step_item(self, case: Case, section: str) -> Item:
        def estimate() -> float:
            per_step = self.step_s.get(case.script, self.settings.first_step_guess_s)
            steps = max(self.settings.warmup, 1) + 1
            return self.case_overhead_s.get(case.script, 1.0) + steps * per_step

        return Item(section, case.name, lambda: self.run_step(case, section), estimate)

    def step_row(self, case: Case, section: str) -> dict:
        setting = self.setting(case.script)
        return {"case": case.name, "script": case.script, "script_file": setting.script, "arch": setting.arch,
                "batch": case.batch or setting.batch, "source_size": list(setting.source_size),
                "target_size": list(setting.target_size), "way": case.way, "precision": case.precision,
                "channels_last": case.channels_last, "purpose": section, "note": setting.note}

    def run_step(self, case: Case, section: str) -> None:
        row = self.step_row(case, section)
        if case.amp == "fp16" and self.device.type != "cuda":
            self.add_step(row | {"status": "skipped", "note": "fp16 autocast needs CUDA"})
            return
        nets = self.script_nets(case.script)
        if nets is None:
            self.add_step(row | {"status": "skipped", "note": self.skip_note[case.script]})
            return
        batch = row["batch"]
        flops = self.flops.setdefault(case.script, [])
        start = time.perf_counter()
        raw = run_case(nets, case, self.device, self.settings.warmup, self.settings.repeats,
                       self.budget.steps,
                       self.script_batches(case.script, batch), flops if batch == nets.setting.batch else None)
        if raw["status"] == "measured":
            steps = len(raw["times"]) + len(raw["warmup_times"])
            self.step_s[case.script] = max(self.step_s.get(case.script, 0.0), raw["step_s"])
            overhead = time.perf_counter() - start - steps * raw["step_s"]
            self.case_overhead_s[case.script] = max(0.0, min(overhead, 30.0))
        else:
            self.result["cut"].append({"section": section, "item": case.name, "reason": raw.get("note", "")})
        self.add_step(row | raw)

    def add_step(self, row: dict) -> None:
        self.result["steps"].append(row)

    # --- evaluation --------------------------------------------------------------------------------
    def eval_item(self, variant: EvalVariant) -> Item:
        def estimate() -> float:
            return self.eval_s or self.settings.min_s["eval"]

        return Item("eval", f"eval_cs.py {variant.flags}", lambda: self.run_eval(variant), estimate)

    def run_eval(self, variant: EvalVariant) -> None:
        start = time.perf_counter()
        if self.eval_root is None:
            self.eval_root = make_val_frames(self.folder / "eval", self.settings.eval_images, self.settings.eval_label)
            self.eval_net = student(SEED)
        figures = eval_throughput(self.eval_root, self.device, self.settings.eval_input, variant, self.eval_net)
        self.result["eval"].append({"flags": variant.flags, "amp": variant.amp, "channels_last": variant.channels_last,
                                    "fold_bn": variant.fold_bn, "workers": variant.workers,
                                    "input_size": list(self.settings.eval_input),
                                    "label_size": list(self.settings.eval_label), **figures})
        self.eval_s = max(self.eval_s, time.perf_counter() - start)

    # --- subprocess sections -----------------------------------------------------------------------
    def subprocess_item(self, kind: str, key: str) -> Item:
        label = f"{kind} {key}"
        return Item(kind, label, lambda: self.run_case_process(kind, key), lambda: self.settings.min_s[kind])

    def run_case_process(self, kind: str, key: str) -> None:
        if key in self.nets and self.nets[key] is None:  # its step cases found the architecture unknown
            if kind == "compile":
                self.result["compile"].append({"script": key, "status": "skipped", "note": self.skip_note[key]})
            return
        out = self.folder / f"{kind}_{key}.json"
        cmd = [sys.executable, "-m", "bench.gpu_case", kind, "--script", key, "--device", str(self.device),
               "--backend", self.settings.compile_backend, "--warmup", str(self.settings.warmup),
               "--repeats", str(self.settings.repeats), "--steps", str(self.settings.deterministic_steps),
               "--json", str(out)]
        if kind == "compile":
            cmd += ["--amp", "bf16"]
        if self.settings.quick:
            cmd.append("--quick")
        limit = min(self.budget.left() - self.settings.reserve_s, self.settings.max_s.get(kind, float("inf")))
        status, tail = run_process(cmd, limit)
        if status != "done" or not out.exists():
            self.note_cut_or_failure(kind, f"{kind} {key}", status, tail)
            if kind == "compile":
                self.result["compile"].append({"script": key, "status": status, "note": tail[-300:]})
            return
        data = json.loads(out.read_text())
        if kind == "compile":
            self.result["compile"].append({"status": "measured" if "step_s" in data else "cut", **data})
        else:
            self.result["deterministic"] = data

    def tests_item(self) -> Item:
        return Item("tests", f"pytest -m gpu {GPU_TESTS}", self.run_tests, lambda: self.settings.min_s["tests"])

    def run_tests(self) -> None:
        xml = self.folder / "gpu_tests.xml"
        # In this process, one after another (no pytest-xdist workers: one GPU, and xdist need not be installed).
        cmd = [sys.executable, "-m", "pytest", "-q", "-o", "addopts=--strict-markers", "-m", "gpu", "-p",
               "no:cacheprovider", f"--junitxml={xml}", GPU_TESTS]
        status, tail = run_process(cmd, self.budget.left() - self.settings.reserve_s)
        summary = junit_summary(xml) if xml.exists() else {}
        self.result["tests"] = {"command": f"python -m pytest -m gpu {GPU_TESTS}", "status": status,
                                **summary, "output_tail": tail[-2000:]}
        if status != "done":
            self.note_cut_or_failure("tests", "pytest -m gpu", status, tail)

    def note_cut_or_failure(self, section: str, label: str, status: str, tail: str) -> None:
        first_line = (tail.strip().splitlines() or [status])[0][:300]
        entry = {"section": section, "item": label, "reason": first_line if status == "cut" else tail[-500:]}
        self.result["cut" if status == "cut" else "failed"].append(entry)

    # --- running -----------------------------------------------------------------------------------
    def roof(self, key: str) -> None:
        self.result[key] = measure_roof(self.device, self.settings.roof_n)
        print(f"roof ({key[5:]}, TFLOP/s, n={self.settings.roof_n}): "
              + ", ".join(f"{k} {v:.3g}" for k, v in self.result[key].items()), flush=True)

    def run(self) -> dict:
        """Measure the roof, every item that fits, the roof again; write the files after each item."""
        self.roof("roof_start")
        if self.device.type == "cuda":
            self.result["config"]["fp32_steps_run_on"] = step_number_type(self.device, "off")
        for item in self.plan():
            estimate = item.estimate()
            if not self.budget.allows(estimate):
                self.result["cut"].append({"section": item.section, "item": item.label,
                                           "reason": f"{self.budget.left():.0f} s left, about {estimate:.0f} s "
                                                     "needed"})
                print(f"cut: {item.label} ({self.result['cut'][-1]['reason']})", flush=True)
                continue
            start = time.perf_counter()
            try:
                item.run()
            except Exception as err:  # one broken case must not cost the whole run: record it, go on
                traceback.print_exc()
                self.result["failed"].append({"section": item.section, "item": item.label,
                                              "reason": f"{type(err).__name__}: {err}"[:500]})
                if self.device.type == "cuda":
                    memory.reset(self.device)
            print(f"{item.section:13s} {item.label:40s} {time.perf_counter() - start:6.1f} s "
                  f"({self.budget.left():.0f} s left)", flush=True)
            self.write()
        if self.device.type == "cuda":
            self.result["config"]["cuda_context_gib"] = memory.cuda_context_gib(self.device)
        if self.budget.left() > self.settings.reserve_s / 2:
            self.roof("roof_end")
        self.result["elapsed_s"] = self.budget.elapsed()
        self.write()
        return self.result

    def write(self) -> None:
        """The JSON and the Markdown of what is measured so far."""
        self.result["elapsed_s"] = self.budget.elapsed()
        self.result["flops_per_step"] = {k: v[0] for k, v in self.flops.items() if v}
        summarize(self.result)
        write_text_atomic(self.out / "gpu_check.json", json.dumps(self.result, indent=1) + "\n")
        write_text_atomic(self.out / "gpu_check.md", format_markdown(self.result) + "\n")


def run_process(cmd: list[str], timeout: float) -> tuple[str, str]:
    """Run `cmd` from the repository root for at most `timeout` seconds: ("done" | "cut" | "failed", output tail).

    The command gets a process group of its own, stopped whole at the timeout (compilation's worker processes
    included), so that nothing it started keeps the machine busy for the cases after it.
    """
    if timeout <= 0:
        return "cut", "no time left"
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return "cut", f"stopped after {timeout:.0f} s (its share of the budget): " + (out or "")[-1000:]
    return ("done" if proc.returncode == 0 else "failed"), (out or "")[-4000:]


def junit_summary(path: Path) -> dict:
    """Counts of a pytest --junitxml file: tests, passed, failed, errors, skipped, and the failing tests."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failing = [f"{case.get('classname')}.{case.get('name')}" for case in root.iter("testcase")
               if case.find("failure") is not None or case.find("error") is not None]
    return {"tests": counts["tests"], "passed": counts["tests"] - counts["failures"] - counts["errors"]
            - counts["skipped"], "failed": counts["failures"], "errors": counts["errors"],
            "skipped": counts["skipped"], "failing": failing}


def machine_info(device: torch.device, settings: Settings, budget: Budget, sections: tuple[str, ...]) -> dict:
    """What ran where: the device, the library versions, the settings and the command."""
    info = {"device": str(device), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "python benchmark.py " + " ".join(sys.argv[1:]) if sys.argv[0].endswith("benchmark.py")
            else " ".join(sys.argv), "torch": torch.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "quick": settings.quick,
            "repeats": settings.repeats, "warmup": settings.warmup, "budget_s": budget.deadline - budget.start,
            "sections": list(sections), "roof_n": settings.roof_n}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({"gpu": props.name, "capability": list(torch.cuda.get_device_capability(device)),
                     "gpu_memory_gib": props.total_memory / memory.GIB, "cuda": torch.version.cuda,
                     "cudnn": torch.backends.cudnn.version(), "cudnn_benchmark": torch.backends.cudnn.benchmark,
                     "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                     "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32})
    else:
        info["gpu"] = None
    return info


def parse_subset(text: str | None, flag: str, choices: tuple[str, ...]) -> tuple[str, ...]:
    """`--flag a,b` -> those of `choices`, in their order (all when not given); a one-line error for another."""
    if not text:
        return choices
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names or any(n not in choices for n in names):
        raise ConfigError(f"{flag}: expected a comma-separated subset of {','.join(choices)}, got {text!r}")
    return tuple(c for c in choices if c in names)


def run(device_name: str = "cuda", quick: bool = False, budget_s: float | None = None,
        out: str | Path = "runs/gpu_check", sections: str | None = None, repeats: int | None = None,
        warmup: int | None = None, scripts: str | None = None) -> dict:
    """`benchmark.py --gpu`: measure within the budget, write OUT/gpu_check.{json,md}, print the Markdown."""
    settings = QUICK if quick else GPU
    overrides = {k: v for k, v in (("repeats", repeats), ("warmup", warmup), ("budget_s", budget_s)) if v is not None}
    if scripts:
        keys = parse_subset(scripts, "--scripts", tuple(s.key for s in SCRIPTS))
        overrides.update(scripts=keys, compile_scripts=keys[:1] if quick else keys)
    if overrides:
        settings = Settings(**{**settings.__dict__, **overrides})
    chosen = parse_subset(sections, "--sections", SECTIONS)
    device = resolve_device(device_name)
    seed_everything(SEED, False, device)  # as the training scripts: cuDNN benchmarking on a GPU
    budget = Budget(settings.budget_s, settings.reserve_s)
    out = Path(out)
    print(f"GPU check on {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'no GPU'}), "
          f"budget {settings.budget_s:.0f} s, sections {','.join(chosen)}; writing {out}/gpu_check.json and .md",
          flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        result = Check(device, settings, budget, out, Path(tmp), chosen).run()
    print()
    print(format_markdown(result))
    return result
