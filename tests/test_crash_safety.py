"""Crash safety: checkpoints survive SIGKILL at any moment; --keep-last; SIGINT/SIGTERM save and resume;
a NaN/Inf loss stops the run naming the step and the term, with the last good checkpoint kept."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train_gta2cs_multi_drnd22 as student_script
import utils.objective
from tests.conftest import REPO, tiny_train_args
from utils.checkpoint import load_training_state, save_training_state
from utils.cli import run_cli

# the smallest input the discriminators take (5 stride-2 convs), one image per batch: fast on 2 cores
SMALL = ["--input-size", "32,32", "--input-size-target", "32,32", "--batch-size", "1"]


def _step_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("step_*.pth"))


def test_keep_last_keeps_the_last_k_step_files_and_last_is_the_newest(tmp_path):
    for step in range(1, 7):
        save_training_state({"format": "dakd-train", "step": step}, tmp_path, step, keep_last=3)
    assert _step_files(tmp_path) == ["step_0000004.pth", "step_0000005.pth", "step_0000006.pth"]
    assert load_training_state(tmp_path / "last.pth")["step"] == 6
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.parametrize("keep_last", [1, 3])
def test_sigkill_while_saving_always_leaves_a_loadable_last_pth(tmp_path, keep_last):
    writer = subprocess.Popen([sys.executable, str(REPO / "tests" / "ckpt_writer.py"), str(tmp_path),
                               str(keep_last)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    rng = random.Random(keep_last)
    steps = []
    try:
        for round_ in range(10):
            writer.stdin.write(f"go {round_}\n")
            writer.stdin.flush()
            pid = int(writer.stdout.readline())
            time.sleep(0.05 + 0.25 * rng.random())
            os.kill(pid, signal.SIGKILL)
            writer.stdin.write(f"reap {pid}\n")
            writer.stdin.flush()
            assert int(writer.stdout.readline()) == -signal.SIGKILL
            if not (tmp_path / "last.pth").exists():
                assert round_ == 0  # killed before its first save completed
                continue
            state = load_training_state(tmp_path / "last.pth")
            values = {float(t.unique()) for t in state["net"].values() if t.numel()}
            assert values == {float(state["step"])}, "a torn checkpoint"
            steps.append(state["step"])
            assert len(_step_files(tmp_path)) <= keep_last + 1  # at most one not yet pruned
    finally:
        writer.stdin.close()
        writer.wait(timeout=30)
    assert len(steps) >= 8 and steps == sorted(steps)


def _wait_for_log(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file() and path.read_text().strip():
            return
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.1)
    raise AssertionError("training never logged a step")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_the_current_step_and_resume_continues(synthetic_root, tmp_path, signum):
    out = tmp_path / "run"
    args = [*tiny_train_args(synthetic_root, out, steps=500), *SMALL, "--save-pred-every", "1000",
            "--keep-last", "2"]
    proc = subprocess.Popen([sys.executable, "train_gta2cs_multi_drnd22.py", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_log(out / "log.jsonl", proc)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, stderr
    assert "--resume" in stdout and "Traceback" not in stderr
    state = load_training_state(out / "last.pth")
    logged = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert state["step"] == max(logged) >= 1
    stop = state["step"] + 1
    assert student_script.main([*args, "--num-steps-stop", str(stop), "--resume", str(out / "last.pth")]) == 0
    assert load_training_state(out / "last.pth")["step"] == stop
    assert len(_step_files(out)) <= 2


def _poison_seg_loss(monkeypatch, bad_call: int, value: float) -> None:
    """Make the `bad_call`-th seg_loss call of the objective return `value` (each step calls it main, aux)."""
    real = utils.objective.seg_loss
    calls = {"n": 0}

    def seg_loss(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * value if calls["n"] == bad_call else loss

    monkeypatch.setattr(utils.objective, "seg_loss", seg_loss)


def test_nonfinite_loss_stops_naming_step_and_term_and_keeps_last_good(synthetic_root, tmp_path, monkeypatch,
                                                                       capsys):
    _poison_seg_loss(monkeypatch, bad_call=4, value=float("nan"))  # step 2, aux head
    out = tmp_path / "run"
    args = [*tiny_train_args(synthetic_root, out, steps=3), *SMALL, "--save-pred-every", "1"]
    status = run_cli(student_script.main, args)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1
    assert "'seg_aux_src'" in err[0] and "step 2" in err[0] and "nan" in err[0]
    assert load_training_state(out / "last.pth")["step"] == 1
    assert not (out / "final.pth").exists()


def test_skip_nonfinite_tolerates_bad_steps_without_applying_them(synthetic_root, tmp_path, monkeypatch):
    _poison_seg_loss(monkeypatch, bad_call=4, value=float("inf"))  # step 2, aux head
    out = tmp_path / "run"
    assert student_script.main([*tiny_train_args(synthetic_root, out, steps=2), *SMALL, "--skip-nonfinite", "1"]) == 0
    state = load_training_state(out / "last.pth")
    assert state["step"] == 2 and state["nonfinite_skipped"] == 1
    assert all(torch.isfinite(v).all() for v in state["net"].values() if v.is_floating_point())
