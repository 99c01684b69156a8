"""Helper of test_crash_safety: saves training checkpoints in forked children that SIGKILL themselves at a
chosen point of `save_training_state`.

The child counts the calls the save makes to the functions that touch the disk (`torch.save`, `os.fsync`,
`os.replace`, `os.link`, `Path.unlink`) and kills itself just before, during (half the bytes of a
`torch.save` written) or just after the call with the chosen index. With no kill point it records the
calls instead. Protocol, one JSON line each way: a request `{"folder", "keep_last", "prior", "no_link",
"kill": null | [index, "before" | "during" | "after"], "record": null | path}` -> the child's exit status
`{"status": int}`. torch is imported once, here, and no torch op runs before a fork.
"""
from __future__ import annotations

import io
import json
import os
import re
import signal
import sys
import traceback
from pathlib import Path

if __name__ == "__main__":  # as `python -m` from the repository root would see it
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from utils.checkpoint import TRAIN_FORMAT, save_training_state  # noqa: E402

_RANDOM_PART = re.compile(r"^(\.[^.]+\.pth)\.[^.]+\.(tmp|link)$")


def state_for(step: int) -> dict:
    """A small training state whose every value is `step`, so a torn or mixed file cannot pass as whole."""
    return {"format": TRAIN_FORMAT, "step": step, "net": {f"w{i}": torch.full((64, 64), float(step)) for i in range(4)}}


def _name(path: object, folder: Path) -> str:
    """A path as the test names it: relative to the run folder, with the random part of temporary names as *."""
    if isinstance(path, int):  # an fsync'd descriptor
        try:
            path = os.readlink(f"/proc/self/fd/{path}")
        except OSError:
            return "?"
    path = Path(path)
    if path.resolve() == folder.resolve():
        return "."
    return _RANDOM_PART.sub(r"\1.*.\2", path.name)


class _Saboteur:
    """Wraps the disk calls of a save: records them, and SIGKILLs this process at the chosen one."""

    def __init__(self, folder: Path, kill: list | None, no_link: bool):
        self.folder, self.kill, self.no_link = folder, kill, no_link
        self.calls: list[str] = []

    def _event(self, label: str, run, partial=None):
        index = len(self.calls)
        self.calls.append(label)
        target = self.kill is not None and self.kill[0] == index
        if target and self.kill[1] == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        if target and self.kill[1] == "during" and partial is not None:
            partial()
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            return run()
        finally:  # also after a call that raised (os.link on a file system without hard links)
            if target and self.kill[1] == "after":
                os.kill(os.getpid(), signal.SIGKILL)

    def install(self) -> None:
        """Replace the disk calls of utils.checkpoint in this process (a child: nothing outlives it)."""
        real_save, real_fsync, real_replace = torch.save, os.fsync, os.replace
        real_link, real_unlink = os.link, Path.unlink

        def name(path: object) -> str:
            return _name(path, self.folder)

        def save(obj, handle, *args, **kwargs):
            def half():  # the first half of the bytes reach the temporary file, then the process dies
                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                handle.flush()
            return self._event(f"save {name(handle.name)}", lambda: real_save(obj, handle, *args, **kwargs), half)

        def link(src, dst, *args, **kwargs):
            def run():
                if self.no_link:
                    raise OSError("hard links not supported (simulated)")
                return real_link(src, dst, *args, **kwargs)
            return self._event(f"link {name(src)} -> {name(dst)}", run)

        torch.save = save
        os.fsync = lambda fd: self._event(f"fsync {name(fd)}", lambda: real_fsync(fd))
        os.replace = lambda src, dst, **kw: self._event(f"replace {name(src)} -> {name(dst)}",
                                                        lambda: real_replace(src, dst, **kw))
        os.link = link
        Path.unlink = lambda path, *a, **kw: self._event(f"unlink {name(path)}", lambda: real_unlink(path, *a, **kw))


def run_request(request: dict) -> None:
    """In a forked child: save steps 1..prior normally, then step prior+1 with the disk calls wrapped; exit."""
    folder, keep_last = Path(request["folder"]), request["keep_last"]
    for step in range(1, request["prior"] + 1):
        save_training_state(state_for(step), folder, step, keep_last)
    saboteur = _Saboteur(folder, request["kill"], request["no_link"])
    saboteur.install()
    step = request["prior"] + 1
    save_training_state(state_for(step), folder, step, keep_last)
    if request["record"]:
        Path(request["record"]).write_text(json.dumps(saboteur.calls))
    os._exit(0)


if __name__ == "__main__":
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                run_request(request)
            except BaseException:
                traceback.print_exc()
            os._exit(1)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)
