"""Crash safety: checkpoints survive SIGKILL at any moment; --keep-last; SIGINT/SIGTERM save and resume;
a NaN/Inf loss stops the run naming the step and the term, with the last good checkpoint kept; a save on a
full disk or into a read-only folder is one line; a run removes what killed saves left in its folder."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_gta2cs_multi_drnd22 as student_script
import utils.objective
from tests.ckpt_writer import state_for
from tests.conftest import REPO, interrupt, tiny_train_args
from utils.checkpoint import load_training_state, save_training_state
from utils.cli import run_cli
from utils.errors import CheckpointError

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


@pytest.fixture(scope="module")
def save_and_die():
    """`save_and_die(**request)`: one save by tests/ckpt_writer.py in a forked child; returns its exit status."""
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "ckpt_writer.py")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)

    def run(**request) -> int:
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())["status"]

    yield run
    proc.stdin.close()
    proc.wait(timeout=30)


# keep_last, saves before the one that dies, hard links; and the disk calls of that save, in order
# (temporary names with their random part as *)
SAVES = {
    "keep1": (1, 1, True, ["save .last.pth.*.tmp", "fsync .last.pth.*.tmp", "replace .last.pth.*.tmp -> last.pth",
                           "fsync ."]),
    "keep1-first-save": (1, 0, True, ["save .last.pth.*.tmp", "fsync .last.pth.*.tmp",
                                      "replace .last.pth.*.tmp -> last.pth", "fsync ."]),
    "keep3": (3, 3, True, ["save .step_0000004.pth.*.tmp", "fsync .step_0000004.pth.*.tmp",
                           "replace .step_0000004.pth.*.tmp -> step_0000004.pth", "fsync .",
                           "link step_0000004.pth -> .last.pth.*.link", "replace .last.pth.*.link -> last.pth",
                           "fsync .", "unlink step_0000001.pth"]),
    "keep3-no-hard-links": (3, 3, False, ["save .step_0000004.pth.*.tmp", "fsync .step_0000004.pth.*.tmp",
                                          "replace .step_0000004.pth.*.tmp -> step_0000004.pth", "fsync .",
                                          "link step_0000004.pth -> .last.pth.*.link", "save .last.pth.*.tmp",
                                          "fsync .last.pth.*.tmp", "replace .last.pth.*.tmp -> last.pth", "fsync .",
                                          "unlink step_0000001.pth"]),
}


def _assert_whole(path: Path, step: int | None = None) -> int:
    """`path` loads as a training state whose tensors all hold its own step (not torn, not mixed); its step."""
    state = load_training_state(path)
    assert sorted(state["net"]) == ["w0", "w1", "w2", "w3"]
    assert {float(t.unique()) for t in state["net"].values()} == {float(state["step"])}, f"{path.name} is torn"
    assert step is None or state["step"] == step
    return state["step"]


@pytest.mark.parametrize("case", list(SAVES))
def test_save_makes_its_disk_calls_in_the_crash_safe_order(tmp_path, save_and_die, case):
    keep_last, prior, links, calls = SAVES[case]
    record = tmp_path / "calls.json"
    assert save_and_die(folder=str(tmp_path / "run"), keep_last=keep_last, prior=prior, no_link=not links,
                        kill=None, record=str(record)) == 0
    assert json.loads(record.read_text()) == calls  # each file fsync'd before it is renamed into place
    _assert_whole(tmp_path / "run" / "last.pth", prior + 1)


@pytest.mark.parametrize("case", list(SAVES))
def test_sigkill_at_every_point_of_a_save_leaves_the_previous_or_the_new_last_pth(tmp_path, save_and_die, case):
    keep_last, prior, links, calls = SAVES[case]
    new = prior + 1
    # last.pth names the new state once the rename onto it has returned
    switch = next(i for i, call in enumerate(calls) if call.startswith("replace") and call.endswith("-> last.pth"))
    points = [(i, when) for i, call in enumerate(calls)
              for when in ("before", "during", "after") if when != "during" or call.startswith("save")]
    for index, when in points:
        folder = tmp_path / f"{index}-{when}"
        status = save_and_die(folder=str(folder), keep_last=keep_last, prior=prior, no_link=not links,
                              kill=[index, when], record=None)
        point = f"killed {when} {calls[index]!r}"
        assert status == -signal.SIGKILL, point
        expected = new if index > switch or (index == switch and when == "after") else prior
        if expected == 0:  # the first save died before last.pth existed: --resume says so
            assert not (folder / "last.pth").exists(), point
        else:
            assert _assert_whole(folder / "last.pth") == expected, point
        steps = _step_files(folder)
        for name in steps:
            _assert_whole(folder / name)
        assert len(steps) <= (0 if keep_last == 1 else keep_last + 1), point  # one old file not yet pruned
        if when == "during":  # the torn bytes are on disk, under a hidden temporary name
            torn = [p for p in folder.iterdir() if p.name.endswith(".tmp")]
            assert len(torn) == 1 and torn[0].stat().st_size > 0, point
            with pytest.raises(CheckpointError, match="cannot read this checkpoint"):
                load_training_state(torn[0])
        # whatever else the kill left is a hidden temporary file, which no load ever reads
        assert {p.name for p in folder.iterdir() if not p.name.startswith(".")} <= {"last.pth", *steps}, point
        # the next save (a resumed run) writes over the debris and prunes to the newest keep_last
        save_training_state(state_for(new + 1), folder, new + 1, keep_last)
        _assert_whole(folder / "last.pth", new + 1)
        kept = sorted([*steps, f"step_{new + 1:07d}.pth"])[-keep_last:] if keep_last > 1 else []
        assert _step_files(folder) == kept, point


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_the_current_step_and_resume_continues(synthetic_root, tmp_path, signum):
    out = tmp_path / "run"
    args = [*tiny_train_args(synthetic_root, out, steps=500), *SMALL, "--save-pred-every", "1000",
            "--keep-last", "2"]
    log = out / "log.jsonl"
    status, stdout, stderr = interrupt(["train_gta2cs_multi_drnd22.py", *args],
                                       lambda: log.is_file() and log.read_text().strip(), signum)
    assert status == 128 + signum, stderr
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
        loss = real(*args, **kwargs)
        if args[0].shape[-2:] == (8, 8):  # the objective's probe of what each term reads, not a step
            return loss
        calls["n"] += 1
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


def _poison_images(monkeypatch, bad_call: int) -> None:
    """Put an Inf pixel in the `bad_call`-th batch the step sends to the net (source, target, source, ...)."""
    from utils.steps import TrainStep

    real, calls = TrainStep._images, {"n": 0}

    def images(self, batch):
        calls["n"] += 1
        x = real(self, batch)
        if calls["n"] == bad_call:
            x = x.clone()
            x[0, 0, 0, 0] = float("inf")  # its forward writes NaN/Inf into the batch-norm running statistics
        return x

    monkeypatch.setattr(TrainStep, "_images", images)


def test_a_skipped_step_leaves_the_net_as_it_was_batch_norm_statistics_included(synthetic_root, tmp_path,
                                                                                monkeypatch):
    once = tmp_path / "one_step"
    assert student_script.main([*tiny_train_args(synthetic_root, once, steps=2), *SMALL, "--num-steps-stop", "1"]) == 0
    _poison_images(monkeypatch, bad_call=3)  # step 2's source batch
    skipped = tmp_path / "skipped"
    assert student_script.main([*tiny_train_args(synthetic_root, skipped, steps=2), *SMALL, "--skip-nonfinite",
                                "1"]) == 0
    after_one = load_training_state(once / "last.pth")["net"]
    final = torch.load(skipped / "final.pth", weights_only=True)["state_dict"]
    assert any("running_var" in k for k in final)
    assert all(torch.equal(final[k], after_one[k]) for k in after_one), "the skipped step changed the net"


def test_a_bad_first_step_says_no_checkpoint_was_kept(synthetic_root, tmp_path, monkeypatch, capsys):
    _poison_seg_loss(monkeypatch, bad_call=1, value=float("nan"))
    out = tmp_path / "run"
    assert run_cli(student_script.main, [*tiny_train_args(synthetic_root, out, steps=2), *SMALL]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint was saved before it" in err and "kept" not in err
    assert not (out / "last.pth").exists()


def test_a_resumed_run_logs_each_step_once_and_keeps_its_first_description(synthetic_root, tmp_path):
    from utils.logger import read_log

    out = tmp_path / "run"
    args = [*tiny_train_args(synthetic_root, out, steps=4), *SMALL, "--keep-last", "2"]
    assert student_script.main(args) == 0
    first = json.loads((out / "config.json").read_text())
    # as if the run had died after step 4 with its last save at step 2: steps 3 and 4 run again
    assert student_script.main(["--resume", str(out / "step_0000002.pth"), "--num-workers", "0", "--no-progress"]) == 0
    assert [r["step"] for r in read_log(out / "log.jsonl")] == [1, 2, 3, 4]
    info = json.loads((out / "config.json").read_text())
    assert {k: info[k] for k in first} == first  # the original command line and settings are kept
    (resume,) = info["resumes"]
    assert resume["at_step"] == 2 and "--resume" in resume["argv"] and resume["changed"] == {}
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = event_accumulator.EventAccumulator(str(out / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("total")] == [1, 2, 3, 4]


# --- a save that cannot be written, and what killed saves leave ------------------------------------
@pytest.mark.parametrize("failure", ["full-disk", "read-only"])
def test_a_save_that_cannot_be_written_is_one_line_and_keeps_the_previous_last_pth(synthetic_root, tmp_path,
                                                                                   monkeypatch, capsys, failure):
    out = tmp_path / "run"
    args = [*tiny_train_args(synthetic_root, out, steps=3), *SMALL, "--save-pred-every", "1"]
    saves = {"n": 0}
    real_save, real_open = torch.save, os.open

    def save(obj, handle, *rest, **kwargs):  # the disk fills up halfway through the second save
        saves["n"] += 1
        if saves["n"] == 2:
            handle.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, handle, *rest, **kwargs)

    def create(file, flags, *rest, **kwargs):  # the folder turns read-only after the first save
        if flags & os.O_CREAT and os.path.basename(file).startswith(".last.pth."):
            saves["n"] += 1
            if saves["n"] == 2:
                raise OSError(errno.EROFS, "Read-only file system", str(file))
        return real_open(file, flags, *rest, **kwargs)

    if failure == "full-disk":
        monkeypatch.setattr(torch, "save", save)
    else:
        monkeypatch.setattr(os, "open", create)
    status = run_cli(student_script.main, args)
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    reason = "No space left on device" if failure == "full-disk" else "Read-only file system"
    assert f"cannot write {out / 'last.pth'}: {reason}" in err[0]
    monkeypatch.undo()
    assert load_training_state(out / "last.pth")["step"] == 1  # the previous save, whole
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
    assert not (out / "final.pth").exists()


def _dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_run_starting_in_a_folder_removes_what_killed_saves_left(synthetic_root, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead, alive = _dead_pid(), os.getpid()
    debris = [f".last.pth.{dead}-k2j4h6.tmp", f".last.pth.{dead}.link", f".step_0000004.pth.{dead}-a1b2c3.tmp",
              ".last.pth.q8w7e6r5.tmp"]  # the last: a name of older versions, without a process id
    kept = [f".last.pth.{alive}-z9y8x7.tmp", "notes.tmp", ".hidden"]  # a live writer's, and not ours
    for name in debris + kept:
        (out / name).write_bytes(b"x" * 100)
    assert student_script.main([*tiny_train_args(synthetic_root, out, steps=1), *SMALL]) == 0
    names = {p.name for p in out.iterdir()}
    assert not names & set(debris) and set(kept) <= names
    assert {"last.pth", "final.pth"} <= names
