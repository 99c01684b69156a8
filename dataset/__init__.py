"""Datasets: GTA5, Cityscapes, BDD100K and SYNTHIA loaders, sampling, list building, synthetic benchmark."""
from __future__ import annotations

from pathlib import Path

from dataset.base import SegmentationDataset
from dataset.labels import (
    CITYSCAPES_LUT,
    CLASSES,
    IGNORE_LABEL,
    NUM_CLASSES,
    PALETTE,
    TRAIN_ID_TO_LABEL_ID,
    colorize,
)
from dataset.layouts import LAYOUTS, resolve_layout
from dataset.sampling import StreamSampler, seed_worker
from dataset.transforms import NORMALIZE, eval_preset, train_preset
from utils.errors import DatasetError

DATASETS: tuple[str, ...] = tuple(LAYOUTS)


def build_dataset(name: str, root: str | Path, split: str, *, list_path: str | Path | None = None,
                  size: tuple[int, int] = (1024, 512), labels: bool = True, label_size: str = "input",
                  random_mirror: bool = False, random_scale: bool = False,
                  max_iters: int | None = None, exclude: str | Path | None = None) -> SegmentationDataset:
    """A dataset of `name` ("gta5", "cityscapes", "bdd", "synthia") from `root`/`split`, resized to `size` (w, h).

    BDD100K's layout (today's `bdd100k/` or the 2018 `seg/`) and SYNTHIA's `RAND_CITYSCAPES/` are
    recognised under `root` (`dataset.layouts.resolve_layout`). Without `list_path` the split's image folder is scanned;
    frames named in the `exclude` file are left out. The train preset (scale jitter, mirror)
    is used when either random option is on, the eval preset otherwise; both share `NORMALIZE`.
    `label_size="full"` keeps labels at the file's resolution (evaluation protocol).
    """
    if name not in LAYOUTS:
        raise DatasetError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    layout, root = resolve_layout(name, root)
    if random_mirror or random_scale:
        transform = train_preset(size, random_mirror=random_mirror, random_scale=random_scale,
                                 label_size=label_size)
    else:
        transform = eval_preset(size, label_size=label_size)
    return SegmentationDataset(layout, root, split, transform, list_path=list_path, labels=labels,
                               max_iters=max_iters, exclude=exclude)


__all__ = [
    "CITYSCAPES_LUT", "CLASSES", "DATASETS", "IGNORE_LABEL", "NORMALIZE", "NUM_CLASSES", "PALETTE",
    "TRAIN_ID_TO_LABEL_ID", "SegmentationDataset", "StreamSampler", "build_dataset", "colorize",
    "seed_worker",
]
