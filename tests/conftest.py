"""Shared fixtures: a tiny synthetic benchmark generated once per test session, and tiny-run flags."""
from __future__ import annotations

import os
import subprocess
import sys
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
