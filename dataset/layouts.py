"""On-disk layouts of GTA5, Cityscapes and BDD100K: where images are, how a label path follows.

Paths are relative to the dataset root, with '/' separators, e.g. for Cityscapes
`leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png` ->
`gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataset.labels import BDD_LUT, CITYSCAPES_LUT
from utils.errors import DatasetError


@dataclass(frozen=True)
class Layout:
    """One dataset's folder structure, file-name rules and label lookup table."""

    name: str
    image_dir: str  # relative image folder; '{split}' is replaced by the split
    image_suffix: str  # file-name ending that marks an image
    label_dir: str
    label_suffix: str  # replaces `image_suffix` in a label's file name
    lut: np.ndarray  # PNG value -> train id (255 ignore)
    recursive: bool  # Cityscapes keeps one sub-folder per city
    has_splits: bool
    description: str  # shown in error messages
    max_id: int = 33  # largest id a label PNG may hold (255, ignore, is always allowed)

    def split_dir(self, split: str) -> str:
        """Relative image folder of a split."""
        return self.image_dir.format(split=split)

    def label_rel(self, image_rel: str) -> str:
        """Relative label path of a relative image path."""
        parts = image_rel.split("/")
        depth = len(self.image_dir.split("/")) + 1 + int(self.recursive)
        top = self.image_dir.split("/")[0]
        if len(parts) != depth or parts[0] != top or not parts[-1].endswith(self.image_suffix):
            raise DatasetError(f"{image_rel!r} is not a {self.name} image path (expected {self.description})")
        # swap the top image folder for the label folder; split / city sub-folders stay
        rest = parts[1:]
        name = rest[-1][: -len(self.image_suffix)] + self.label_suffix
        return "/".join([self.label_dir, *rest[:-1], name])

    def scan(self, root: Path, split: str) -> list[str]:
        """Sorted relative paths of every image of `split` under `root`."""
        folder = root / self.split_dir(split)
        pattern = f"**/*{self.image_suffix}" if self.recursive else f"*{self.image_suffix}"
        return sorted(p.relative_to(root).as_posix() for p in folder.glob(pattern) if p.is_file())


GTA5 = Layout(
    name="gta5", image_dir="images", image_suffix=".png", label_dir="labels", label_suffix=".png",
    lut=CITYSCAPES_LUT, recursive=False, has_splits=False,
    description="ROOT/images/NNNNN.png and ROOT/labels/NNNNN.png holding Cityscapes label ids",
)
CITYSCAPES = Layout(
    name="cityscapes", image_dir="leftImg8bit/{split}", image_suffix="_leftImg8bit.png",
    label_dir="gtFine", label_suffix="_gtFine_labelIds.png", lut=CITYSCAPES_LUT, recursive=True,
    has_splits=True,
    description="ROOT/leftImg8bit/SPLIT/CITY/CITY_SEQ_FRAME_leftImg8bit.png and "
                "ROOT/gtFine/SPLIT/CITY/CITY_SEQ_FRAME_gtFine_labelIds.png",
)
BDD = Layout(
    name="bdd", image_dir="images/{split}", image_suffix=".jpg", label_dir="labels",
    label_suffix="_train_id.png", lut=BDD_LUT, recursive=False, has_splits=True,
    description="ROOT/images/SPLIT/NAME.jpg and ROOT/labels/SPLIT/NAME_train_id.png holding train ids",
    max_id=18,
)

LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (GTA5, CITYSCAPES, BDD)}
