"""Writing predictions to disk: official Cityscapes result PNGs, BDD train-id PNGs, colour maps, overlays.

Layout of a prediction folder DIR (what `eval_cs.py --save-pred DIR` writes):

- `DIR/labelIds/CITY/CITY_SEQ_FRAME_leftImg8bit.png` (Cityscapes): Cityscapes *label ids*, at the
  label's full size, named so that the official evaluator (which matches `CITY_SEQ_FRAME*.png`
  anywhere below `CITYSCAPES_RESULTS`) finds exactly one file per ground truth: point it at
  `DIR/labelIds`, not at DIR, because the colour maps and overlays share the name prefix.
- `DIR/trainIds/NAME_train_id.png` (BDD100K, 2018 layout) or `DIR/trainIds/NAME.png` (today's layout):
  train ids, 255 = ignore, named as the ground-truth label of the layout the images came from.
- `DIR/color/<stem>.png`: the prediction in the Cityscapes palette (Cityscapes: `CITY/CITY_SEQ_FRAME_leftImg8bit`,
  BDD: `NAME`, other inputs: the relative path without extension).
- `DIR/overlay/<stem>.png`: the colour map blended over the input image.
- `DIR/manifest.json`: one entry per image (name, image and label files, the files written), and the
  checkpoint that predicted them.

`eval_cs.py` writes only into an empty (or new) DIR, so that the official evaluator never scores two
models' files together; `--overwrite-pred` first deletes a previous prediction folder's contents
(`check_prediction_folder`, `clear_predictions`).
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from dataset.labels import TRAIN_ID_TO_LABEL_ID, colorize
from dataset.layouts import BDD, Layout
from utils.errors import ConfigError, DatasetError
from utils.files import write_bytes_atomic, write_text_atomic

# CITY_SEQ_FRAME_...: the official scripts split the file name on "_", so a city holds no "_".
_CITYSCAPES_NAME = re.compile(r"^([^_/]+)_(\d+)_(\d+)(?:_|$)")

RESULT_DIRS = {"cityscapes": "labelIds", "bdd": "trainIds"}
PREDICTION_ENTRIES = (*RESULT_DIRS.values(), "color", "overlay", "manifest.json")
"""What a prediction folder holds at its top level (besides hidden temporary files)."""
_TEMPORARY = re.compile(r"^\..+\.tmp\d*$")  # `.NAME.PID-RANDOM.tmp`, and `.NAME.tmpPID` of older versions


def _as_array(train_ids: torch.Tensor | np.ndarray) -> np.ndarray:
    """(H, W) train ids as a NumPy integer array."""
    if isinstance(train_ids, torch.Tensor):
        train_ids = train_ids.detach().to("cpu").numpy()
    arr = np.asarray(train_ids)
    if arr.ndim != 2:
        raise ValueError(f"expected an (H, W) map of train ids, got shape {arr.shape}")
    return arr


def safe_stem(name: str) -> PurePosixPath:
    """The relative path of `name` without its extension; rejects absolute paths and '..' parts."""
    path = PurePosixPath(name.replace(os.sep, "/"))
    if path.is_absolute() or ".." in path.parts or not path.name:
        raise DatasetError(f"cannot use {name!r} as a relative output name")
    return path.with_suffix("")


def cityscapes_result_name(name: str) -> str:
    """Relative path of the official result PNG for a Cityscapes image or label `name`.

    `val/frankfurt/frankfurt_000000_000294_leftImg8bit.png` -> `frankfurt/frankfurt_000000_000294_leftImg8bit.png`.
    """
    base = PurePosixPath(name.replace(os.sep, "/")).name
    match = _CITYSCAPES_NAME.match(base)
    if not match:
        raise DatasetError(f"{name!r} is not a Cityscapes file name (expected CITY_SEQ_FRAME_leftImg8bit.png)")
    city, seq, frame = match.groups()
    return f"{city}/{city}_{seq}_{frame}_leftImg8bit.png"


def bdd_result_name(name: str, label_suffix: str = BDD.label_suffix) -> str:
    """Relative path of the train-id PNG for a BDD100K image `name`, named as its label: `NAME.jpg` ->
    `NAME_train_id.png` (2018 layout) or, with `label_suffix=".png"` (today's layout), `NAME.png`."""
    return f"{safe_stem(name).name}{label_suffix}"


def result_name(name: str, dataset: str, label_suffix: str = BDD.label_suffix) -> str:
    """Relative path, below `DIR/RESULT_DIRS[dataset]`, of the result PNG for image `name` (BDD: named
    with the layout's `label_suffix`)."""
    if dataset == "cityscapes":
        return cityscapes_result_name(name)
    if dataset == "bdd":
        return bdd_result_name(name, label_suffix)
    raise ValueError(f"no result format for dataset {dataset!r} (expected one of {sorted(RESULT_DIRS)})")


def to_label_ids(train_ids: torch.Tensor | np.ndarray) -> np.ndarray:
    """Train ids (0..18, others ignored) -> Cityscapes label ids as uint8 (ignore -> 0 'unlabeled')."""
    arr = _as_array(train_ids).astype(np.int64)
    arr = np.where((arr >= 0) & (arr < 256), arr, 255)
    return TRAIN_ID_TO_LABEL_ID[arr]


def _save_png(array: np.ndarray, path: Path) -> None:
    """Encode first, then write through a temporary file: a full disk leaves no empty or partial PNG."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    write_bytes_atomic(path, buffer.getvalue())


def save_label_ids(train_ids: torch.Tensor | np.ndarray, path: str | Path) -> None:
    """Write an 8-bit PNG of Cityscapes label ids (the official result format)."""
    _save_png(to_label_ids(train_ids), Path(path))


def save_train_ids(train_ids: torch.Tensor | np.ndarray, path: str | Path) -> None:
    """Write an 8-bit PNG of train ids (values outside 0..255 become 255)."""
    arr = _as_array(train_ids).astype(np.int64)
    _save_png(np.where((arr >= 0) & (arr < 256), arr, 255).astype(np.uint8), Path(path))


def overlay(image: np.ndarray, train_ids: torch.Tensor | np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the colourised prediction over an HxWx3 uint8 image (resized to the prediction if needed)."""
    color = colorize(_as_array(train_ids))
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {img.shape}")
    if img.shape[:2] != color.shape[:2]:
        h, w = color.shape[:2]
        img = np.asarray(Image.fromarray(img.astype(np.uint8)).resize((w, h), Image.BILINEAR))
    blended = (1.0 - alpha) * img.astype(np.float32) + alpha * color.astype(np.float32)
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def save_color(train_ids: torch.Tensor | np.ndarray, path: str | Path) -> None:
    """Write the prediction in the Cityscapes palette (ignored pixels black)."""
    _save_png(colorize(_as_array(train_ids)), Path(path))


def save_overlay(image: np.ndarray, train_ids: torch.Tensor | np.ndarray, path: str | Path,
                 alpha: float = 0.5) -> None:
    """Write the colourised prediction blended over `image`."""
    _save_png(overlay(image, train_ids, alpha), Path(path))


class PredictionWriter:
    """Writes every prediction of a run into one folder (layout in the module docstring).

    `layout`: the dataset layout the images came from (BDD100K's two layouts name labels differently);
    default the 2018 BDD layout's names.
    """

    def __init__(self, out_dir: str | Path, dataset: str | None = "cityscapes", *, alpha: float = 0.5,
                 color: bool = True, overlays: bool = True, layout: Layout | None = None) -> None:
        if dataset is not None and dataset not in RESULT_DIRS:
            raise ValueError(f"no result format for dataset {dataset!r} (expected one of {sorted(RESULT_DIRS)})")
        self.out_dir = Path(out_dir)
        self.dataset = dataset
        self.alpha = alpha
        self.color = color
        self.overlays = overlays
        self.label_suffix = layout.label_suffix if layout is not None and layout.name == "bdd" else BDD.label_suffix
        self.entries: list[dict] = []
        self._stems: set[str] = set()

    @property
    def result_dir(self) -> Path | None:
        """The folder holding the result PNGs (`CITYSCAPES_RESULTS` for the official evaluator)."""
        return None if self.dataset is None else self.out_dir / RESULT_DIRS[self.dataset]

    def display_stem(self, name: str) -> str:
        """Relative path (no extension) of the colour map and overlay of image `name`."""
        if self.dataset == "cityscapes":
            return cityscapes_result_name(name)[: -len(".png")]
        if self.dataset == "bdd":
            return safe_stem(name).name
        return str(safe_stem(name))

    def write(self, name: str, train_ids: torch.Tensor | np.ndarray, image: np.ndarray | None = None,
              **extra: str) -> dict:
        """Write the files for image `name` (result PNG, colour, overlay when `image` is given); returns their paths."""
        ids = _as_array(train_ids)
        stem = self.display_stem(name)
        if stem in self._stems:
            # e.g. a.png and a.jpg in one folder: the second would silently overwrite the first
            raise DatasetError(f"two inputs map to the same output name {stem!r} (last: {name!r}); rename one")
        self._stems.add(stem)
        entry: dict = {"name": name, **extra}
        if self.dataset is not None:
            path = self.result_dir / result_name(name, self.dataset, self.label_suffix)
            if self.dataset == "cityscapes":
                save_label_ids(ids, path)
            else:
                save_train_ids(ids, path)
            entry["result"] = str(path)
        if self.color:
            path = self.out_dir / "color" / f"{stem}.png"
            save_color(ids, path)
            entry["color"] = str(path)
        if self.overlays and image is not None:
            path = self.out_dir / "overlay" / f"{stem}.png"
            save_overlay(image, ids, path, self.alpha)
            entry["overlay"] = str(path)
        self.entries.append(entry)
        return entry

    def write_manifest(self, **info: str) -> Path:
        """Write `DIR/manifest.json` listing every written prediction (and `info`, e.g. the checkpoint); returns
        its path."""
        path = self.out_dir / "manifest.json"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        payload = {"dataset": self.dataset, "result_dir": str(self.result_dir) if self.result_dir else None,
                   **info, "items": self.entries}
        write_text_atomic(path, json.dumps(payload, indent=2))
        return path


def _is_prediction_entry(path: Path) -> bool:
    """True for what a prediction folder holds: its entries, and the temporary file of an interrupted write."""
    if path.is_symlink():
        return False
    return path.name in PREDICTION_ENTRIES or (path.is_file() and _TEMPORARY.match(path.name) is not None)


def _describe_previous(out_dir: Path) -> str:
    """What the manifest of a previous run in `out_dir` says predicted it, for an error message."""
    try:
        checkpoint = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8")).get("checkpoint")
    except (OSError, ValueError, AttributeError):
        checkpoint = None
    return f" (predictions of {checkpoint})" if checkpoint else ""


def check_prediction_folder(out_dir: str | Path, flag: str, *, overwrite: bool, own_files=()) -> None:
    """Refuse (`ConfigError` naming `flag`) to write predictions into a folder that already holds files.

    An absent or empty folder, or one holding only `own_files` (what this command writes itself, such
    as its --json), is fine. With `overwrite`, a folder holding only a previous prediction folder's
    entries (`PREDICTION_ENTRIES`, hidden temporary files, `own_files`) is fine too: `clear_predictions`
    empties it once every input is checked. Anything else in it is refused either way, so that the
    flag never deletes files it did not write.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return
    own = {Path(f).resolve() for f in own_files}
    present = sorted(p for p in out_dir.iterdir() if p.resolve() not in own)
    if not present:
        return
    names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in present[:4]) + (", ..." if len(present) > 4 else "")
    foreign = [p for p in present if not _is_prediction_entry(p)]
    if foreign:
        shown = ", ".join(p.name for p in foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise ConfigError(f"{flag} {out_dir}: the folder is not empty and holds files that are not predictions "
                          f"({shown}); choose a new or empty folder")
    if not overwrite:
        raise ConfigError(f"{flag} {out_dir}: the folder already holds {names}{_describe_previous(out_dir)}; "
                          "the official evaluator would score them together with the new ones: choose a new "
                          "or empty folder, or add --overwrite-pred to delete them first")


def clear_predictions(out_dir: str | Path) -> None:
    """Delete a prediction folder's entries (`PREDICTION_ENTRIES` and temporary files), keeping the folder."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return
    for path in out_dir.iterdir():
        if not _is_prediction_entry(path):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
