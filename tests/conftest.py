"""Shared fixtures: a tiny synthetic benchmark generated once per test session, and tiny-run flags."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent

# The tests run tiny tensors, where extra threads cost more than they give, and they start subprocesses:
# one compute thread per process keeps a small CPU from being oversubscribed (OpenMP threads that share a
# core spin-wait for each other and run several times slower). An explicit OMP_NUM_THREADS is kept, so that
# the float-sensitive tests can be run with another thread count's summation order (docs/robustness.md).
_threads = os.environ.get("OMP_NUM_THREADS", "")
if not _threads.isdigit() or int(_threads) < 1:
    os.environ["OMP_NUM_THREADS"] = _threads = "1"
torch.set_num_threads(int(_threads))


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `gpu` run only where CUDA is (benchmark.py --gpu runs them on a lent GPU)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (benchmark.py --gpu runs these where there is one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def run_script(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python <args>` from the repository root and capture its output."""
    return subprocess.run([sys.executable, *args], cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A tiny synthetic benchmark (gta5/, cityscapes/, bdd/ in the real layouts), made once."""
    root = tmp_path_factory.mktemp("synthetic")
    result = run_script("-m", "dataset.synthetic", "--out", str(root), "--num-train", "8", "--num-val", "4",
                        "--size", "64,32", "--seed", "0")
    assert result.returncode == 0, result.stderr
    return root


def untrained_checkpoint(folder: Path, arch: str) -> Path:
    """An untrained `arch` (seed 0) saved in final.pth form in `folder`."""
    from model import build_seg_model, save_final

    torch.manual_seed(0)
    path = folder / "final.pth"
    save_final(path, build_seg_model(arch))
    return path


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained DRN-D-22 in final.pth form (a net to evaluate, export or run; a small teacher)."""
    return untrained_checkpoint(tmp_path_factory.mktemp("ckpt"), "drn_d_22")


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory) -> Path:
    """An untrained DRN-D-38 teacher in final.pth form."""
    return untrained_checkpoint(tmp_path_factory.mktemp("teacher"), "drn_d_38")


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120) -> None:
    """Poll `ready()` while `proc` runs; fail with its stderr if it ends first, or after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ready():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("timed out")


def interrupt(args: list[str], ready: Callable[[], bool], signum: int) -> tuple[int, str, str]:
    """Run `python <args>` from the repository root, send it `signum` once `ready()`; its status, stdout, stderr."""
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_until(ready, proc)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, stdout, stderr


def tiny_train_args(root: Path, out: Path, *, source: str = "gta5", steps: int = 4) -> list[str]:
    """Flags for a few-step CPU training run at 64x32 on the synthetic benchmark."""
    return ["--source", source, "--data-dir", str(root / source), "--data-dir-target", str(root / "cityscapes"),
            "--input-size", "64,32", "--input-size-target", "64,32", "--eval-size", "64,32", "--batch-size", "2",
            "--num-workers", "0", "--num-steps", str(steps), "--pretrained", "none", "--save-pred-every", "2",
            "--log-every", "1", "--no-progress", "--device", "cpu", "--snapshot-dir", str(out)]


@pytest.fixture(autouse=True)
def no_weight_downloads(monkeypatch):
    """Tests never reach the network: the weights downloader's default opener fails as an offline machine does."""
    import urllib.error

    import model.pretrained

    def offline(url, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution (tests run offline)")

    monkeypatch.setattr(model.pretrained, "_urlopen", offline)


@pytest.fixture(autouse=True)
def fresh_cpu_announcement(monkeypatch):
    """Each test's command describes the CPU as it would in a process of its own (it does so once per process)."""
    import utils.cpu

    monkeypatch.setattr(utils.cpu, "_announced", [])
