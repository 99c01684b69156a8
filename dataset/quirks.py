"""What real downloads hold that a clean copy does not: warnings said once, image/label size checks
from file headers, and frames left out by name (`--exclude`).

A `DatasetWarning` is shown once per process and dataset (`warn_once`), as one line on stderr.
Size checks read headers only (PIL's `Image.open` parses the size without decoding), from a pool
of threads, so that a whole GTA5 copy is checked at start-up instead of failing on frame 7 000.
"""
from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from utils.errors import DatasetError

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHOW_NAMES = 3  # how many names a warning or an error lists
HEADER_THREADS = 8  # header reads wait on the disk, not the CPU: more threads than cores help


class DatasetWarning(UserWarning):
    """A dataset quirk the loaders work around (resized pairs, skipped frames); shown once per process."""


_warned: set[tuple] = set()
_format = warnings.formatwarning


def _one_line(message, category, filename, lineno, line=None) -> str:
    # a quirk of the user's data, not of our code: no source line
    if isinstance(category, type) and issubclass(category, DatasetWarning):
        return f"warning: {message}\n"
    return _format(message, category, filename, lineno, line)


warnings.formatwarning = _one_line


def warn_once(key: tuple, message: str) -> bool:
    """Issue `message` as a `DatasetWarning` unless `key` was warned about in this process; True if issued."""
    if key in _warned:
        return False
    _warned.add(key)
    warnings.warn(message, DatasetWarning, stacklevel=3)
    return True


def reset_warnings() -> None:
    """Forget which warnings were given (tests build the same dataset more than once)."""
    _warned.clear()


def first_names(names: Sequence[str], count: int = SHOW_NAMES) -> str:
    """The first `count` names joined by ', ', then '...' when there are more."""
    return ", ".join(names[:count]) + (", ..." if len(names) > count else "")


def header_size(path: str | Path, what: str = "image") -> tuple[int, int]:
    """(width, height) of an image file from its header (no decoding); `DatasetError` names a bad file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as file:
            head = file.read(24)
    except OSError as err:
        raise DatasetError(f"cannot read {what} {path}: {err.strerror or err}") from err
    if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
        # the PNG header's first chunk holds the size: 2.5x faster than PIL's format detection
        return struct.unpack(">II", head[16:24])
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError, ValueError) as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise DatasetError(f"cannot read {what} {path}: corrupt or unsupported file ({reason})") from err


def parallel_map(fn: Callable, items: Sequence, *, threads: int = HEADER_THREADS,
                 progress: str | None = None) -> list:
    """`[fn(x) for x in items]` on a thread pool, order kept; an exception is returned in its slot, not
    raised. With `progress`, a tqdm bar of that title on stderr."""
    def safe(item):
        try:
            return fn(item)
        except Exception as err:  # noqa: BLE001 - the caller decides per item
            return err

    threads = max(1, min(threads, len(items), (os.cpu_count() or 1) * 4))
    bar = None
    if progress is not None:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc=progress, unit="file", dynamic_ncols=True, mininterval=0.5)
    results = []
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for result in pool.map(safe, items, chunksize=64):
            results.append(result)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return results


def size_gap(image_wh: tuple[int, int], label_wh: tuple[int, int]) -> float:
    """The larger relative difference of the two sides, as a fraction of the image's side (0: same size)."""
    return max(abs(image_wh[0] - label_wh[0]) / max(image_wh[0], 1),
               abs(image_wh[1] - label_wh[1]) / max(image_wh[1], 1))


def describe_gap(image_wh: tuple[int, int], label_wh: tuple[int, int]) -> str:
    """'image 1914x1052, label 1912x1050 (-2, -2 px; 0.2 %)'."""
    dw, dh = label_wh[0] - image_wh[0], label_wh[1] - image_wh[1]
    return (f"image {image_wh[0]}x{image_wh[1]}, label {label_wh[0]}x{label_wh[1]} "
            f"({dw:+d}, {dh:+d} px; {100 * size_gap(image_wh, label_wh):.1f} %)")


def read_names(path: str | Path, flag: str = "--exclude") -> list[str]:
    """Non-empty, non-comment lines of a list of frames (first whitespace-separated field of each)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{flag} {path}: no such file (expected one frame name or image path per line)")
    fields = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    return [f for f in fields if not f.startswith("#")]


def frame_keys(image_rel: str, stem: str) -> set[str]:
    """Every spelling of a frame an exclude list may use: its stem and every tail of its relative path
    (`images/15188.png`, `15188.png`, `15188`; `frankfurt/frankfurt_..._leftImg8bit.png` too)."""
    parts = image_rel.split("/")
    return {"/".join(parts[i:]) for i in range(len(parts))} | {stem}


def drop_excluded(files: Iterable[str], entries: Sequence[str], stem: Callable[[str], str]
                  ) -> tuple[list[str], list[str], list[str]]:
    """(kept files, dropped files, entries that matched no file) of `files` against exclude `entries`.

    An entry matches a frame by its stem or a tail of its root-relative image path (see `frame_keys`);
    a leading './' and backslashes are ignored.
    """
    clean = {e: e.replace("\\", "/").removeprefix("./") for e in entries}
    wanted = set(clean.values())
    kept, dropped, used = [], [], set()
    for f in files:
        hit = frame_keys(f, stem(f)) & wanted
        if hit:
            dropped.append(f)
            used |= hit
        else:
            kept.append(f)
    return kept, dropped, [e for e in entries if clean[e] not in used]
