"""Run logging: one JSON line per logged step, TensorBoard when installed, and the run's own description."""
from __future__ import annotations

import contextlib
import json
import math
import platform
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from utils.cpu import cpu_info, cpu_model, overrides
from utils.files import is_write_error, output_error, write_text_atomic

REPO_ROOT = Path(__file__).resolve().parent.parent


def git_revision() -> str:
    """The repository's commit (with '-dirty' when it has local changes), or 'unknown'."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev}-dirty" if dirty else rev


def environment() -> dict:
    """Versions and hardware a result depends on: torch, the CPU's kernel capability (and what overrides it),
    what the CPU runs fast (utils/cpu.py), the GPUs."""
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpus": gpus,
        "gpu": gpus[0] if gpus else None,
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_overrides": overrides(),
        "cpu_features": cpu_info().features(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
    }


def describe_machine(env: dict) -> str:
    """One line naming where a result was computed, from `environment()`: torch, CPU capability (with any
    override), GPU."""
    switches = ", ".join(f"{k}={v}" for k, v in env.get("cpu_overrides", {}).items())
    cpu = f"CPU {env.get('cpu_capability', 'unknown')}" + (f" ({switches})" if switches else "")
    gpu = f"GPU {env['gpu']}" if env.get("gpu") else "no GPU"
    return f"torch {env.get('torch', 'unknown')}, {cpu}, {gpu}"


class RunLogger:
    """Appends every logged step to `log.jsonl` (and TensorBoard if available); silent on non-main ranks.

    `resumed_at`: the global step a resumed run continues from. The records after it (steps that ran
    after the last save and will run again) are dropped from log.jsonl and TensorBoard, and config.json
    keeps the run's first description, with this resume appended to its `resumes`.
    """

    def __init__(self, folder: str | Path, enabled: bool = True, tensorboard: bool = True,
                 resumed_at: int | None = None):
        self.folder = Path(folder)
        self.enabled = enabled
        self.resumed_at = resumed_at
        self._writer = None
        self._file = None
        if not enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        log = self.folder / "log.jsonl"
        if resumed_at is not None and log.exists():
            _drop_records_after(log, resumed_at)
        self._file = open(log, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                purge = None if resumed_at is None else resumed_at + 1
                self._writer = SummaryWriter(log_dir=str(self.folder / "tb"), purge_step=purge)

    def write_run_info(self, config: dict, extra: dict | None = None, kept: Iterable[str] = ()) -> None:
        """Save the resolved configuration, git revision, environment and command line beside the checkpoints.

        A resumed run keeps the first description and appends its own to its `resumes` list, with the
        settings among `kept` (those a run keeps across a resume) that it changed.
        """
        if not self.enabled:
            return
        path = self.folder / "config.json"
        info = {"config": config, "git": git_revision(), "environment": environment(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv, **(extra or {})}
        first = _read_json(path) if self.resumed_at is not None else None
        if first is not None and isinstance(first.get("config"), dict):
            before = first["config"]
            changed = {k: [before.get(k), config.get(k)] for k in kept if before.get(k) != config.get(k)}
            resume = {"at_step": self.resumed_at, **{k: info[k] for k in ("started", "argv", "git", "environment")},
                      "changed": changed}
            info = {**first, "resumes": [*first.get("resumes", []), resume]}
        write_text_atomic(path, json.dumps(info, indent=2, default=str) + "\n")

    def log(self, step: int, values: dict[str, float], phase: str | None = None) -> None:
        """Record named scalars for a step."""
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3)}
        if phase:
            record["phase"] = phase
        record.update({k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in values.items()})
        try:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as err:  # a full disk: one line naming the file, not a traceback
            if is_write_error(err):
                raise output_error(self._file.name, err) from err
            raise
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(key, float(value), step)

    def close(self) -> None:
        """Flush and close the files."""
        if self._file is not None:
            # every record was flushed when logged: what could fail here is a record that already failed
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _drop_records_after(log: Path, step: int) -> None:
    """Rewrite `log` without the step records after `step` (and without a line a crash cut short)."""
    kept = []
    with open(log, encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not (isinstance(record, dict) and record.get("step", 0) > step):
                kept.append(line if line.endswith("\n") else line + "\n")
    write_text_atomic(log, "".join(kept))


def read_log(path: str | Path) -> list[dict]:
    """The records of a `log.jsonl`, in order."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
