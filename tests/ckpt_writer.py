"""Helper of test_crash_safety: writes training checkpoints in a loop in forked children, to be SIGKILLed.

Protocol on stdin/stdout, one line each: `go ROUND` -> fork a child that saves forever and answer its
pid; `reap PID` -> wait for that child and answer its exit status. torch is imported once, here.
"""
from __future__ import annotations

import os
import sys

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from utils.checkpoint import TRAIN_FORMAT, save_training_state  # noqa: E402


def state_for(step: int) -> dict:
    """A few MB of tensors whose every value is `step`, so a torn file cannot pass as whole."""
    return {"format": TRAIN_FORMAT, "step": step,
            "net": {f"w{i}": torch.full((256, 256), float(step)) for i in range(12)}}


def save_forever(folder: str, round_: int, keep_last: int) -> None:
    """Write checkpoints with increasing steps until killed."""
    step = round_ * 100_000
    while True:
        step += 1
        save_training_state(state_for(step), folder, step, keep_last)


if __name__ == "__main__":
    folder, keep_last = sys.argv[1], int(sys.argv[2])
    for line in sys.stdin:
        command, value = line.split()
        if command == "go":
            pid = os.fork()
            if pid == 0:
                try:
                    save_forever(folder, int(value), keep_last)
                finally:
                    os._exit(1)
            print(pid, flush=True)
        else:
            _, status = os.waitpid(int(value), 0)
            print(os.waitstatus_to_exitcode(status), flush=True)
