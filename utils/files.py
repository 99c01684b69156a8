"""Writing files so that a reader never sees half of one: a hidden temporary file beside the target, renamed
over it once complete. Every writer of the repository goes through `atomic_write`.

A temporary file is named `.NAME.PID-RANDOM.tmp`: hidden, beside its target (a rename never crosses file
systems), and stamped with the writing process, so that the debris of a killed writer can be told from
the file of a live one (`stale_temporaries`). A writer of several files that belong together (export_onnx.py's
graphs and JSON) stages them all and renames them into place together once everything has worked
(`StagedOutputs`).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from utils.errors import OutputError

# What a write can meet that is about the disk or the folder, not about the code: these become one line.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
                          errno.EIO, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG})
_TEMPORARY = re.compile(r"^\..+\.(?P<stamp>[^.]+)\.tmp$")


def output_error(path: str | os.PathLike, err: OSError) -> OutputError:
    """The one-line error for a write to `path` that failed with `err` (e.g. a full disk)."""
    reason = err.strerror or str(err) or type(err).__name__
    where = f" ({err.filename})" if err.filename and str(err.filename) != str(path) else ""
    return OutputError(f"cannot write {path}: {reason}{where}")


def is_write_error(err: BaseException) -> bool:
    """True for an `OSError` a full disk, a read-only folder or missing permissions raise."""
    return isinstance(err, OSError) and err.errno in WRITE_ERRNOS


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, *, durable: bool = True) -> Iterator[BinaryIO]:
    """A binary file to write `path`'s new content into; it replaces `path` when the block ends without error.

    The bytes go to a hidden temporary file beside `path`, renamed over it at the end: a crash, an
    exception or a full disk leaves the old `path` (or none) and no partial file. `durable` also fsyncs
    the file before the rename and the folder after it (checkpoints), so that the new file survives a
    power cut; predictions skip it for speed. A full disk, a read-only folder or a permission problem
    becomes an `OutputError` naming `path`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temporary(path)
    except OSError as err:
        if is_write_error(err):
            raise output_error(path, err) from err
        raise
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if is_write_error(err):
            raise output_error(path, err) from err
        raise
    if durable:
        fsync_folder(path.parent)


def _create_temporary(path: Path) -> tuple[int, str]:
    """A new hidden temporary file beside `path`, open for writing: (descriptor, its path).

    Created with mode 0o666 less the umask, as `open` creates files (tempfile.mkstemp's 0o600 would
    leave predictions and results unreadable to the rest of a group).
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path.parent))


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` through a temporary file and a rename (`atomic_write`)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename (`atomic_write`)."""
    with atomic_write(path, durable=False) as handle:
        handle.write(data)


class StagedOutputs:
    """A context manager handing out a hidden temporary path beside each output file (`stage`).

    `commit()` renames every staged file that was written onto its target; leaving the context without a
    commit (an error, Ctrl-C) removes them, so the targets keep their old contents.
    """

    def __init__(self) -> None:
        self._staged: dict[Path, Path] = {}

    def stage(self, target: str | os.PathLike) -> Path:
        """The temporary path that becomes `target` at `commit()` (in the same folder, so the rename is atomic)."""
        target = Path(target)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            if is_write_error(err):
                raise output_error(target, err) from err
            raise
        self._staged[target] = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        return self._staged[target]

    def commit(self) -> None:
        """Rename every staged file that was written onto its target."""
        for target, staged in self._staged.items():
            if staged.exists():
                try:
                    os.replace(staged, target)
                except OSError as err:
                    if is_write_error(err):
                        raise output_error(target, err) from err
                    raise

    def __enter__(self) -> StagedOutputs:
        return self

    def __exit__(self, *exc) -> None:
        for staged in self._staged.values():
            with contextlib.suppress(OSError):
                staged.unlink(missing_ok=True)


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make a rename inside `folder` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """True when a process with this id runs on this machine (this process included)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def stamp_pid(stamp: str) -> int | None:
    """The process id at the start of a temporary name's stamp (`PID-RANDOM` or `PID`), or None."""
    head = stamp.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def stale_temporaries(folder: str | os.PathLike, pattern: re.Pattern = _TEMPORARY) -> list[Path]:
    """The hidden temporary files in `folder` (not below it) whose writer no longer runs.

    `pattern` matches a file name and has a group `stamp` holding `PID-RANDOM` or `PID`; a stamp
    without a process id (names written by older versions) counts as stale.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        match = pattern.match(path.name)
        if match is None or not path.is_file() or path.is_symlink():
            continue
        pid = stamp_pid(match.group("stamp"))
        if pid is None or not pid_alive(pid):
            found.append(path)
    return found
