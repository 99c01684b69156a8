"""On-disk layouts of GTA5, Cityscapes, BDD100K and SYNTHIA: where images are, how a label path follows.

Paths are relative to the dataset root, with '/' separators, e.g. for Cityscapes
`leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png` ->
`gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png`.
BDD100K comes in two layouts (today's download and the 2018 `seg/` folder); `resolve_layout` tells
them apart from the folders under the root a user gives. SYNTHIA-RAND-CITYSCAPES is read as downloaded
(`RAND_CITYSCAPES/RGB`, `RAND_CITYSCAPES/GT/LABELS` with 16-bit labels).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dataset.labels import BDD_LUT, CITYSCAPES_LUT, SYNTHIA_LUT, SYNTHIA_MAX_ID
from utils.errors import DatasetError

#: How far an image and its label may differ in size, per side, as a fraction of the image's side,
#: for a layout that tolerates it (GTA5: most frames are 1914x1052, some pairs are off by a few
#: pixels). Such a pair is resized image and label each to the input size (the label nearest), as
#: the original code did; a larger difference (another aspect ratio, a wrong file) is refused.
SIZE_TOLERANCE = 0.05


@dataclass(frozen=True)
class Layout:
    """One dataset's folder structure, file-name rules, label lookup table and tolerated quirks."""

    name: str
    image_dir: str  # relative image folder; '{split}' is replaced by the split
    image_suffix: str  # file-name ending that marks an image
    label_dir: str  # relative label folder; '{split}' is replaced by the image's split
    label_suffix: str  # replaces `image_suffix` in a label's file name
    lut: np.ndarray  # PNG value -> train id (255 ignore)
    recursive: bool  # Cityscapes keeps one sub-folder per city
    has_splits: bool
    description: str  # shown in error messages
    max_id: int = 33  # largest id a label PNG may hold (255, ignore, is always allowed)
    size_tolerance: float = 0.0  # see SIZE_TOLERANCE; 0: image and label must have the same size
    skip_unlabelled: bool = False  # a scan (no list) leaves out images without a label, with a warning
    variant: str = ""  # which of a dataset's layouts this is (BDD100K: "10k" or "2018")
    label_reader: str = "ids"  # how label files are decoded: a key of dataset.decode.LABEL_READERS

    def split_dir(self, split: str) -> str:
        """Relative image folder of a split."""
        return self.image_dir.format(split=split)

    def label_rel(self, image_rel: str) -> str:
        """Relative label path of a relative image path."""
        parts = image_rel.split("/")
        head = self.image_dir.split("/")
        depth = len(head) + 1 + int(self.recursive)
        split = ""
        ok = len(parts) == depth and parts[-1].endswith(self.image_suffix)
        for pattern, part in zip(head, parts):
            if pattern == "{split}":
                split = part
            elif pattern != part:
                ok = False
        if not ok:
            raise DatasetError(f"{image_rel!r} is not a {self.name} image path (expected {self.description})")
        rest = parts[len(head):]  # city sub-folder (Cityscapes) and file name
        name = rest[-1][: -len(self.image_suffix)] + self.label_suffix
        return "/".join([self.label_dir.format(split=split), *rest[:-1], name])

    def stem(self, image_rel: str) -> str:
        """The frame's name: the image file name without `image_suffix` (`15188`, `frankfurt_000000_000294`)."""
        name = image_rel.rsplit("/", 1)[-1]
        return name[: -len(self.image_suffix)] if name.endswith(self.image_suffix) else name

    def scan(self, root: Path, split: str) -> list[str]:
        """Sorted relative paths of every image of `split` under `root`."""
        folder = root / self.split_dir(split)
        pattern = f"**/*{self.image_suffix}" if self.recursive else f"*{self.image_suffix}"
        return sorted(p.relative_to(root).as_posix() for p in folder.glob(pattern) if p.is_file())


GTA5 = Layout(
    name="gta5", image_dir="images", image_suffix=".png", label_dir="labels", label_suffix=".png",
    lut=CITYSCAPES_LUT, recursive=False, has_splits=False,
    description="ROOT/images/NNNNN.png and ROOT/labels/NNNNN.png holding Cityscapes label ids",
    size_tolerance=SIZE_TOLERANCE, skip_unlabelled=True,
)
CITYSCAPES = Layout(
    name="cityscapes", image_dir="leftImg8bit/{split}", image_suffix="_leftImg8bit.png",
    label_dir="gtFine/{split}", label_suffix="_gtFine_labelIds.png", lut=CITYSCAPES_LUT, recursive=True,
    has_splits=True,
    description="ROOT/leftImg8bit/SPLIT/CITY/CITY_SEQ_FRAME_leftImg8bit.png and "
                "ROOT/gtFine/SPLIT/CITY/CITY_SEQ_FRAME_gtFine_labelIds.png",
)
BDD = Layout(  # the 2018 download's seg/ folder
    name="bdd", image_dir="images/{split}", image_suffix=".jpg", label_dir="labels/{split}",
    label_suffix="_train_id.png", lut=BDD_LUT, recursive=False, has_splits=True,
    description="ROOT/images/SPLIT/NAME.jpg and ROOT/labels/SPLIT/NAME_train_id.png holding train ids "
                "(ROOT: the 2018 download's seg/ folder)",
    max_id=18, variant="2018",
)
BDD_10K = Layout(  # today's semantic-segmentation download, bdd100k/
    name="bdd", image_dir="images/10k/{split}", image_suffix=".jpg", label_dir="labels/sem_seg/masks/{split}",
    label_suffix=".png", lut=BDD_LUT, recursive=False, has_splits=True,
    description="ROOT/images/10k/SPLIT/NAME.jpg and ROOT/labels/sem_seg/masks/SPLIT/NAME.png holding train "
                "ids (ROOT: the download's bdd100k/ folder)",
    max_id=18, variant="10k",
)

SYNTHIA = Layout(  # SYNTHIA-RAND-CITYSCAPES: one folder of frames, no official split (papers train on all)
    name="synthia", image_dir="RGB", image_suffix=".png", label_dir="GT/LABELS", label_suffix=".png",
    lut=SYNTHIA_LUT, recursive=False, has_splits=False,
    description="ROOT/RGB/NNNNNNN.png and ROOT/GT/LABELS/NNNNNNN.png, 16-bit PNGs with SYNTHIA's class id in "
                "the first channel (ROOT: the download's RAND_CITYSCAPES/ folder)",
    max_id=SYNTHIA_MAX_ID, label_reader="synthia",
)

LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (GTA5, CITYSCAPES, BDD, SYNTHIA)}
BDD_LAYOUTS: tuple[Layout, ...] = (BDD_10K, BDD)

# Where a BDD100K layout's root may sit below the folder a user gives (first match wins).
_BDD_ROOTS = ((BDD_10K, "bdd100k"), (BDD_10K, "."), (BDD, "bdd100k/seg"), (BDD, "seg"), (BDD, "."))
_BDD_EXPECTED = ("DIR/bdd100k/images/10k/SPLIT/NAME.jpg with DIR/bdd100k/labels/sem_seg/masks/SPLIT/NAME.png "
                 "(today's download), or DIR/seg/images/SPLIT/NAME.jpg with DIR/seg/labels/SPLIT/"
                 "NAME_train_id.png (2018); DIR may also be bdd100k/ or seg/ itself")


def resolve_layout(name: str, root: str | Path) -> tuple[Layout, Path]:
    """The layout of dataset `name` found under `root`, and the folder its relative paths start from.

    GTA5 and Cityscapes have one layout, rooted at `root`. For BDD100K `root` may be the folder that
    holds today's `bdd100k/` or the 2018 `seg/`, or either of those folders itself; for SYNTHIA the
    download's `RAND_CITYSCAPES/` or the folder holding it.
    """
    if name not in LAYOUTS:
        raise DatasetError(f"unknown dataset {name!r}; expected one of {', '.join(LAYOUTS)}")
    root = Path(root)
    if name == "synthia" and not (root / SYNTHIA.image_dir).is_dir() and (root / "RAND_CITYSCAPES").is_dir():
        return SYNTHIA, root / "RAND_CITYSCAPES"  # the folder that holds the download's top folder
    if name != "bdd" or not root.is_dir():
        return LAYOUTS[name], root  # a missing root is reported by the caller, naming the expected layout
    for layout, sub in _BDD_ROOTS:
        base = root / sub
        if (base / layout.image_dir.split("/{split}")[0]).is_dir():
            return layout, base
    raise DatasetError(f"bdd dataset root {root} holds no BDD100K images (expected {_BDD_EXPECTED})")
