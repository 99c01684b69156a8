"""A fork server for command-line tests: import torch once, then run each script in a forked child.

Every case is still its own process (own exit status, own stdout/stderr, nothing shared after the
fork), but it starts in milliseconds instead of the seconds `import torch, torchvision` takes.
Protocol: one JSON request per stdin line `{"argv": [...], "cwd": "..."}` (argv as for `python`:
a script path or `-m module`, then flags); one JSON answer per line on stdout
`{"returncode": int, "stdout": str, "stderr": str}`. The server itself never runs a torch op, so
no thread pool exists at fork time.
"""
from __future__ import annotations

import json
import os
import runpy
import sys
import tempfile
import traceback

# as `python script.py` from the repository root would see it
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# what the scripts import, loaded once before any fork
import torch  # noqa: E402, F401
import torchvision  # noqa: E402, F401

import dataset  # noqa: E402, F401
import model  # noqa: E402, F401
import utils.engine  # noqa: E402, F401
import utils.evaluate  # noqa: E402, F401


def _child(argv: list[str], cwd: str, out_path: str, err_path: str) -> None:
    """Run one command line in this (forked) process and leave with its exit status."""
    code = 1
    try:
        out = os.open(out_path, os.O_WRONLY)
        err = os.open(err_path, os.O_WRONLY)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.chdir(cwd)
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as stop:
        if stop.code is None:
            code = 0
        elif isinstance(stop.code, int):
            code = stop.code
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:  # what the interpreter would do with an uncaught exception
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(requests, answers) -> None:
    """Answer each request line from `requests` on `answers`."""
    for line in requests:
        request = json.loads(line)
        with tempfile.TemporaryDirectory() as tmp:
            out_path, err_path = os.path.join(tmp, "out"), os.path.join(tmp, "err")
            for path in (out_path, err_path):
                open(path, "w").close()
            pid = os.fork()
            if pid == 0:
                _child(request["argv"], request["cwd"], out_path, err_path)
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            with open(out_path) as out, open(err_path) as err:
                answer = {"returncode": code, "stdout": out.read(), "stderr": err.read()}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


if __name__ == "__main__":
    # answers go to a private copy of stdout, so that a child's prints cannot corrupt the protocol
    channel = os.fdopen(os.dup(1), "w")
    serve(sys.stdin, channel)
