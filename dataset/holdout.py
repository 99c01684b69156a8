"""Fixed, seeded frame subsets for checkpoint selection (docs/selection.md): source frames held out of
training, whose labels score `sel/source_mIoU`, and the target's train images the label-free signals
are computed on.

A frame's place is decided by a hash of its name (the layout's stem, e.g. `15188` or
`aachen_000000_000019`), a purpose and a seed: the `count` frames of smallest hash are chosen. So the
choice is the same in every call, process and rank (no random state is read or consumed), whatever the
order or spelling of the list, and a resumed run holds out the same frames. Adding or excluding frames
only moves the boundary: a frame that stays a candidate keeps its rank.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from dataset.base import SegmentationDataset
from dataset.transforms import eval_preset
from utils.errors import ConfigError, DatasetError

HOLDOUT_SEED = 0
SIGNAL_SEED = 0
HOLDOUT_PURPOSE = "source-holdout"
SIGNAL_PURPOSE = "target-signals"
EVAL_SPLITS = ("val", "test")  # never used for the signals


def _file_stem(name: str) -> str:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base else base


def frame_rank(stem: str, seed: int, purpose: str) -> int:
    """The frame's place in the order of choice: 64 bits of SHA-256 of (purpose, seed, stem)."""
    return int.from_bytes(hashlib.sha256(f"{purpose}/{seed}/{stem}".encode()).digest()[:8], "big")


def choose_frames(files: Sequence[str], count: int, *, seed: int, purpose: str,
                  stem: Callable[[str], str] = _file_stem) -> list[str]:
    """The entries of `files` whose frame is one of the `count` frames of smallest `frame_rank`, in list order.

    Frames are told apart by `stem` (default: the file name without extension), so an entry listed twice
    is chosen, or not, with its copy; `count` counts frames, and at most all of them are chosen.
    """
    if count < 0:
        raise ConfigError(f"a frame count must be >= 0, got {count}")
    stems = sorted({stem(f) for f in files}, key=lambda s: (frame_rank(s, seed, purpose), s))
    chosen = set(stems[:count])
    return [f for f in files if stem(f) in chosen]


def split_holdout(files: Sequence[str], count: int, *, seed: int = HOLDOUT_SEED,
                  stem: Callable[[str], str] = _file_stem) -> tuple[list[str], list[str]]:
    """(train_names, holdout_names): `files` without, and with only, the `count` held-out source frames.

    Both keep the list's order; they are disjoint, and together they are `files`. A hold-out that
    leaves no frame to train on is a `DatasetError`.
    """
    frames = len({stem(f) for f in files})
    if count >= frames > 0:
        raise DatasetError(f"holding out {count} source frames leaves none of the {frames} to train on "
                           f"(hold out fewer)")
    holdout = choose_frames(files, count, seed=seed, purpose=HOLDOUT_PURPOSE, stem=stem)
    held = set(holdout)
    return [f for f in files if f not in held], holdout


def holdout_datasets(source: SegmentationDataset, count: int, *, size: tuple[int, int],
                     seed: int = HOLDOUT_SEED) -> tuple[SegmentationDataset, SegmentationDataset]:
    """(train, holdout): the training source dataset without its `count` held-out frames, and those frames
    with labels under the eval preset at `size` (w, h), labels at the input size (`label_size="input"`).

    `source` is the dataset training would draw from (its list, `--exclude` and checks applied); it is
    left as it is. Train on the first, score `sel/source_mIoU` on the second.
    """
    if not source.labels:
        raise ConfigError("the source hold-out needs a source dataset built with labels")
    unique = source.files[: source.num_unique]
    train_names, holdout_names = split_holdout(unique, count, seed=seed, stem=source.layout.stem)
    return source.subset(train_names), source.subset(holdout_names, eval_preset(size, label_size="input"))


def target_signal_dataset(target: SegmentationDataset, count: int, *, size: tuple[int, int],
                          seed: int = SIGNAL_SEED) -> SegmentationDataset:
    """The fixed subset of `count` target *train* images the signals are computed on: no labels (none is
    ever opened), eval preset at `size` (w, h). Refuses a val or test split."""
    if target.split in EVAL_SPLITS:
        raise ConfigError(f"the selection signals use the target's train images, never its {target.split!r} "
                          "split (that is the test data)")
    if count < 1:
        raise ConfigError(f"the signals' target subset needs at least one image, got {count}")
    unique = target.files[: target.num_unique]
    names = choose_frames(unique, count, seed=seed, purpose=SIGNAL_PURPOSE, stem=target.layout.stem)
    return target.subset(names, eval_preset(size, label_size="input"), labels=False)
