"""Crash-safe checkpoint files: atomic writes, the last K snapshots, and the resumable training state."""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import torch

from utils.errors import CheckpointError
from utils.files import atomic_write, fsync_folder, stale_temporaries

__all__ = ["TRAIN_FORMAT", "atomic_save", "fsync_folder", "load_training_state", "remove_interrupted_saves",
           "save_training_state", "to_cpu"]

TRAIN_FORMAT = "dakd-train"
_STEP_FILE = re.compile(r"^step_(\d+)\.pth$")
# what an interrupted save leaves: `.NAME.PID-RANDOM.tmp` (and `.NAME.RANDOM.tmp` from older versions), and
# the hard link `.last.pth.PID.link` that becomes last.pth when --keep-last > 1
_SAVE_DEBRIS = re.compile(r"^\..+\.(?P<stamp>[^.]+)\.(?:tmp|link)$")


def atomic_save(obj: object, path: str | os.PathLike) -> Path:
    """Write `obj` with `torch.save` to a temporary file beside `path`, fsync it, then rename it over `path`.

    A crash at any moment leaves either the old file or the new one, never a partial file; a full disk or
    a read-only folder is an `OutputError` naming `path` (and leaves no temporary file).
    """
    path = Path(path)
    with atomic_write(path) as handle:
        torch.save(obj, handle)
    return path


def remove_interrupted_saves(folder: str | os.PathLike) -> list[Path]:
    """Delete the hidden temporary files that killed saves left in a run folder; returns what was removed.

    Called when a run starts in `folder`. A file whose writer still runs (its process id is in the name)
    is kept.
    """
    removed = []
    for path in stale_temporaries(folder, _SAVE_DEBRIS):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def to_cpu(obj: object) -> object:
    """`obj` with every tensor in its dicts, lists and tuples replaced by a CPU copy (CPU tensors kept)."""
    if isinstance(obj, torch.Tensor):
        return obj if obj.device.type == "cpu" else obj.detach().cpu()
    if isinstance(obj, dict):
        return {key: to_cpu(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(value) for value in obj)
    return obj


def save_training_state(state: dict, folder: str | os.PathLike, step: int, keep_last: int = 1) -> Path:
    """Write `folder/last.pth` atomically; with keep_last > 1 also keep `step_N.pth` for the last K saves.

    Tensors are written as CPU copies, so that a plain `torch.load` reads the file on a machine without a GPU.
    """
    folder = Path(folder)
    state = to_cpu(state)
    last = folder / "last.pth"
    if keep_last <= 1:
        return atomic_save(state, last)
    snapshot = atomic_save(state, folder / f"step_{step:07d}.pth")
    # last.pth becomes a second name of the snapshot: an atomic rename of a fresh hard link.
    link = folder / f".last.pth.{os.getpid()}.link"
    if link.exists():
        link.unlink()
    try:
        os.link(snapshot, link)
        os.replace(link, last)
    except OSError:  # file systems without hard links
        if link.exists():  # made, but not renamed
            link.unlink()
        atomic_save(state, last)
    else:
        fsync_folder(folder)  # the rename onto last.pth survives a power cut
    snapshots = sorted(p for p in folder.iterdir() if _STEP_FILE.match(p.name))
    for old in snapshots[:-keep_last]:
        old.unlink()
    return last


def load_training_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a `last.pth` written by `save_training_state` (weights_only); raise `CheckpointError` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--resume {path}: no such file (expected a last.pth written by a training run)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated, corrupt, or a pickle that is not plain weights
        raise CheckpointError(f"--resume {path}: cannot read this checkpoint ({type(err).__name__}); "
                              "it may be truncated or not a training checkpoint") from err
    if not isinstance(state, dict) or state.get("format") != TRAIN_FORMAT:
        raise CheckpointError(f"--resume {path}: not a training checkpoint (expected a last.pth with "
                              f"format '{TRAIN_FORMAT}'); use --restore-from to start from weights only")
    return state
