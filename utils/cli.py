"""The edge between the shell and the code: argument parsing and one-line errors with exit status 2."""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from utils.errors import ConfigError, UserError
from utils.files import is_write_error

EXIT_USAGE = 2


class ArgumentParser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` whose errors are a single line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, unless it has none or its help already says what the default does."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or "default" in text:
            return text
        return super()._get_help_string(action)


def add_checkpoint_reader_flags(parser: argparse.ArgumentParser) -> None:
    """The flags every script that reads a trained net shares: --arch, --allow-pickle, --no-progress, --debug."""
    parser.add_argument("--arch", default=None,
                        help="architecture of a checkpoint that does not name it (default: read from its keys)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="UNSAFE: allow unpickling a trusted legacy checkpoint (runs code from the file)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")


def parse_pair(text: str, flag: str = "size") -> tuple[int, int]:
    """Parse 'W,H' into two positive integers; raise `argparse.ArgumentTypeError` naming `flag` otherwise."""
    parts = text.split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 2 or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{flag} expects two positive integers 'W,H' (e.g. 1024,512), got {text!r}")
    return values  # type: ignore[return-value]


def size_arg(text: str) -> tuple[int, int]:
    """argparse `type=` for a 'W,H' size."""
    return parse_pair(text, "size")


def finite_float(text: str) -> float:
    """argparse `type=` for a finite number (`nan`, `inf` and words refused)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse `type=` for a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _int_at_least(text: str, minimum: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse `type=` for an integer > 0."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse `type=` for an integer >= 0."""
    return _int_at_least(text, 0, "an integer >= 0")


def check_output(path: str | os.PathLike, flag: str, *, folder: bool = False) -> None:
    """Fail early (`ConfigError` naming `flag`) when `path` cannot be created as a file (or a folder).

    Checked before long work: an existing path of the other kind, an ancestor that is a regular
    file, or a nearest existing folder that is not writable.
    """
    target = Path(path)
    kind = "a folder" if folder else "a file name"
    if target.exists() and target.is_dir() != folder:
        raise ConfigError(f"{flag} {path}: exists and is not {kind}")
    parent = target if folder else target.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path}: {parent} is a file, not a folder (expected {kind} to write)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: cannot write in {parent} (permission denied)")


def run_cli(main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """Run a script's `main(argv)` and return its exit status (an int it returns, else 0).

    A `UserError`, or an `OSError` of a full disk or a read-only folder that names its file, becomes one
    line on stderr and exit status 2; Ctrl-C (KeyboardInterrupt) and `Stopped` one line and 128 + signal.

    With `--debug` in argv (or DAKD_DEBUG=1) the traceback is shown instead.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("DAKD_DEBUG") == "1"
    try:
        status = main(args)
    except UserError as err:
        if debug:
            raise
        print(f"{_prog()}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, as command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit flush cannot fail
        return 1
    except OSError as err:  # a full disk or a read-only folder met outside the writers that name their file
        if debug or not (is_write_error(err) and err.filename):
            raise
        print(f"{_prog()}: error: {err.filename}: {err.strerror}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyboardInterrupt, Stopped) as stop:
        if debug:
            raise
        signum = stop.signum if isinstance(stop, Stopped) else signal.SIGINT
        print(f"{_prog()}: stopped by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    return status if isinstance(status, int) else 0


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived inside `stop_on_signals`: unwinds the stack, so that every `with` and
    `finally` cleans up, and `run_cli` ends the command with status 128 + `signum` (130, 143)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise `Stopped` (the previous handlers come back after it).

    For commands that write as they go (predict.py): their temporary files are removed on the way out.
    Outside the main thread (no signal handlers there) the block runs unchanged.
    """
    def handle(signum, frame):
        raise Stopped(signum)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread
            previous[signum] = signal.signal(signum, handle)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _prog() -> str:
    """The command as the user typed it: `python -m package.module` or the script's file name."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name and spec.name != "__main__":
        return f"python -m {spec.name}"
    return os.path.basename(sys.argv[0]) or "dakd"


def one_line(err: BaseException) -> str:
    """The error's message on one line.

    A DataLoader worker re-raises a dataset error with the worker's traceback in the message; the
    original message is its last line, after the exception's qualified class name.
    """
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else type(err).__name__
    last = lines[-1]
    prefix = f"{type(err).__module__}.{type(err).__qualname__}: "
    return last[len(prefix):] if last.startswith(prefix) else last
