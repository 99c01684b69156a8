"""A list-based segmentation dataset over one of the layouts (GTA5, Cityscapes, BDD100K, SYNTHIA)."""
from __future__ import annotations

import math
import posixpath
from pathlib import Path

import torch
from torch.utils.data import Dataset

from dataset.decode import LABEL_READERS, read_image
from dataset.labels import IGNORE_LABEL
from dataset.layouts import Layout
from dataset.lut import LabelLUT, undefined_ids
from dataset.quirks import (
    describe_gap,
    drop_excluded,
    first_names,
    header_size,
    parallel_map,
    read_names,
    size_gap,
    warn_once,
)
from dataset.transforms import EvalTransform
from utils.errors import DatasetError

_SHOW_MISSING = 3  # how many missing paths an error message lists


def read_list(list_path: str | Path) -> list[str]:
    """Non-empty, non-comment lines of a list file (first whitespace-separated field of each)."""
    path = Path(list_path)
    if not path.is_file():
        raise DatasetError(f"list file {path} does not exist")
    lines = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    return [line for line in lines if not line.startswith("#")]


def resolve_entries(layout: Layout, root: Path, split: str, entries: list[str]) -> list[str]:
    """Root-relative image paths of list entries.

    An entry is a path relative to the root (what `make_lists` writes) or, as in the original code's
    lists, relative to the split's image folder (`frankfurt/frankfurt_..._leftImg8bit.png`).
    """
    split_dir = layout.split_dir(split)
    resolved = []
    for entry in entries:
        entry = posixpath.normpath(entry.replace("\\", "/")).lstrip("/")  # also drops a leading "./"
        if entry.split("/")[0] == split_dir.split("/")[0] or (root / entry).is_file():
            resolved.append(entry)
        else:
            resolved.append(f"{split_dir}/{entry}")
    return resolved


def _missing_error(kind: str, layout: Layout, root: Path, missing: list[str], total: int) -> DatasetError:
    shown = ", ".join(missing[:_SHOW_MISSING]) + (", ..." if len(missing) > _SHOW_MISSING else "")
    return DatasetError(f"{len(missing)} of {total} listed {layout.name} {kind} missing under {root} "
                        f"(expected {layout.description}); first: {shown}")


def scan_split(layout: Layout, root: str | Path, split: str) -> list[str]:
    """Sorted root-relative image paths of `split`; `DatasetError` if the folder is missing or empty."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{layout.name} dataset root {root} does not exist (expected {layout.description})")
    folder = root / layout.split_dir(split)
    if not folder.is_dir():
        raise DatasetError(f"{layout.name} split folder {folder} does not exist (expected {layout.description})")
    files = layout.scan(root, split)
    if not files:
        raise DatasetError(f"no {layout.name} images found in {folder} (expected {layout.description})")
    return files


class SegmentationDataset(Dataset):
    """Images (and optionally train-id labels) of one split of a layout, listed or scanned.

    Items are dicts {"image": float32 (3,H,W), "label": int64 (H,W) (when labels=True),
    "name": root-relative image path}. With `max_iters` the list is repeated ceil(max_iters / n)
    times, so that one pass covers at least `max_iters` items (the original code's iteration sampling).
    `label_lut` maps the label values of the layout to train ids. It runs after the resize and crop, on
    the pixels the item keeps: nearest resizing, cropping and mirroring only pick pixels, and the
    padding value 255 maps to itself, so this equals mapping the whole file first, with less work.

    Quirks of real downloads (docs/data.md): frames named in the `exclude` file are left out; a
    layout with `skip_unlabelled` (GTA5) leaves out scanned images without a label (a listed one is
    an error); a layout with a `size_tolerance` (GTA5) checks every pair's size from the file headers
    at start-up, refuses pairs further apart than that, and resizes the others image and label each
    to the input size (the label nearest). With `label_size="full"` such a label keeps its own size
    and predictions are made at it. Each quirk is said once per process (`dataset.quirks.warn_once`).
    """

    def __init__(self, layout: Layout, root: str | Path, split: str, transform: EvalTransform, *,
                 list_path: str | Path | None = None, labels: bool = True,
                 max_iters: int | None = None, exclude: str | Path | None = None) -> None:
        self.layout = layout
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.labels = labels
        self._rng: torch.Generator | None = None
        self._rng_seed: int | None = None
        self.label_lut = LabelLUT(layout.lut)
        if self.label_lut.table[IGNORE_LABEL] != IGNORE_LABEL:  # padding must map to itself
            raise ValueError(f"the {layout.name} table must map {IGNORE_LABEL} to itself")
        self.files = self._find_files(list_path)
        if exclude is not None:
            self._exclude(exclude)
        self._check_exist(listed=list_path is not None)
        if labels and layout.size_tolerance > 0:
            self._check_sizes()
        self.num_unique = len(self.files)
        if max_iters is not None:
            if max_iters <= 0:
                raise DatasetError(f"max_iters must be positive, got {max_iters}")
            self.files = self.files * math.ceil(max_iters / len(self.files))

    def _find_files(self, list_path: str | Path | None) -> list[str]:
        layout, root = self.layout, self.root
        if not root.is_dir():
            raise DatasetError(f"{layout.name} dataset root {root} does not exist "
                               f"(expected {layout.description})")
        if list_path is not None:
            files = resolve_entries(layout, root, self.split, read_list(list_path))
            if not files:
                raise DatasetError(f"list file {list_path} is empty (expected one image path per line)")
            return files
        return scan_split(layout, root, self.split)

    def _warn(self, kind: str, message: str) -> None:
        warn_once((kind, self.layout.name, str(self.root.absolute()), self.split), message)

    def _exclude(self, exclude: str | Path) -> None:
        kept, dropped, unmatched = drop_excluded(self.files, read_names(exclude), self.layout.stem)
        if not kept:
            raise DatasetError(f"--exclude {exclude}: leaves no {self.layout.name} image of {self.root} "
                               f"({len(dropped)} excluded)")
        if unmatched:
            self._warn("exclude", f"{len(unmatched)} entries of {exclude} match no {self.layout.name} frame "
                                  f"of {self.root} (first: {first_names(unmatched)})")
        self.files = kept

    def _check_exist(self, listed: bool) -> None:
        root, layout = self.root, self.layout
        missing = [f for f in self.files if not (root / f).is_file()]
        if missing:
            raise _missing_error("images are", layout, root, missing, len(self.files))
        if not self.labels:
            return
        missing = [f for f in self.files if not (root / layout.label_rel(f)).is_file()]
        if not missing:
            return
        if listed or not layout.skip_unlabelled or len(missing) == len(self.files):
            raise _missing_error("labels are", layout, root, [layout.label_rel(f) for f in missing],
                                 len(self.files))
        self._warn("unlabelled", f"{len(missing)} of {len(self.files)} {layout.name} images in {root} have no "
                                 f"label and are left out (first: {first_names(missing)})")
        gone = set(missing)
        self.files = [f for f in self.files if f not in gone]

    def _check_sizes(self) -> None:
        """Read every pair's size from the headers: refuse pairs too far apart, say once which are resized."""
        root, layout = self.root, self.layout
        paths = [(root / f, root / layout.label_rel(f)) for f in self.files]
        sizes = parallel_map(lambda pair: (header_size(pair[0]), header_size(pair[1], "label")), paths)
        for result in sizes:
            if isinstance(result, DatasetError):
                raise result
            if isinstance(result, Exception):
                raise DatasetError(str(result)) from result
        off = [(f, img, lab) for f, (img, lab) in zip(self.files, sizes) if img != lab]
        tolerance = layout.size_tolerance
        refused = [item for item in off if size_gap(item[1], item[2]) > tolerance]
        if refused:
            f, img, lab = refused[0]
            raise DatasetError(f"{len(refused)} {layout.name} labels differ from their image by more than "
                               f"{100 * tolerance:g} % in a side (another aspect ratio or a wrong file): "
                               f"{root / layout.label_rel(f)}: {describe_gap(img, lab)}; fix it or leave the "
                               f"frame out with --exclude")
        if off:
            shown = [f"{layout.stem(f)}: {describe_gap(img, lab)}" for f, img, lab in off[:2]]
            self._warn("resized", f"{len(off)} of {len(self.files)} {layout.name} images in {root} differ in "
                                  f"size from their label by at most {100 * tolerance:g} %; each is resized to "
                                  f"the input size on its own, the label nearest (first: {'; '.join(shown)}"
                                  f"{'; ...' if len(off) > 2 else ''})")

    def __len__(self) -> int:
        return len(self.files)

    def image_path(self, index: int) -> Path:
        """Absolute path of item `index`'s image."""
        return (self.root / self.files[index]).absolute()

    def label_path(self, index: int) -> Path:
        """Absolute path of item `index`'s label file."""
        return (self.root / self.layout.label_rel(self.files[index])).absolute()

    def _generator(self) -> torch.Generator:
        # torch.initial_seed() is the global seed in the main process and base_seed + worker_id in a
        # DataLoader worker, so every process draws its own reproducible augmentation stream.
        seed = torch.initial_seed()
        if self._rng is None or self._rng_seed != seed:
            self._rng = torch.Generator().manual_seed(seed)
            self._rng_seed = seed
        return self._rng

    def load_raw(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 image (3,H,W) and uint8 label (H,W) of item `index` as on disk (label ids, not yet train
        ids; None if labels=False); a label holding an id the layout does not define is refused, and so is one
        whose size differs from the image's by more than the layout's `size_tolerance`."""
        image_path = self.image_path(index)
        image = read_image(image_path)
        if not self.labels:
            return image, None
        label_path = self.label_path(index)
        raw = LABEL_READERS[self.layout.label_reader](label_path)
        image_wh, label_wh = (image.shape[-1], image.shape[-2]), (raw.shape[-1], raw.shape[-2])
        if image_wh != label_wh and size_gap(image_wh, label_wh) > self.layout.size_tolerance:
            raise DatasetError(f"image {image_path} is {image.shape[-1]}x{image.shape[-2]} but its label "
                               f"{label_path} is {raw.shape[-1]}x{raw.shape[-2]} (W x H)")
        undefined = undefined_ids(raw, self.layout.max_id)
        if undefined:
            # a foreign id usually means the wrong kind of label file (colour or instance PNG)
            raise DatasetError(f"label {label_path} holds ids {undefined} outside the {self.layout.name} table "
                               f"(expected 0..{self.layout.max_id} or 255)")
        return image, raw

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        # `key` is an index, or (index, sample_seed) from StreamSampler(with_seeds=True): then the
        # sample's augmentation comes from a generator of its own, independent of worker and resume.
        if isinstance(key, tuple):
            index, sample_seed = key
            generator = torch.Generator().manual_seed(int(sample_seed))
        else:
            index, generator = key, self._generator()
        image, raw = self.load_raw(index)
        image, label = self.transform(image, raw, generator=generator)
        item = {"image": image, "name": self.files[index]}
        if label is not None:
            item["label"] = self.label_lut(label, inplace=True).long()
        return item
