"""Quirks of the real GTA5 download, written into a synthetic GTA5 copy (`dataset.synthetic --quirks`).

Frame numbers count from 1 like the files (`00002.png`); the copy needs at least `MIN_FRAMES` frames:
- `RESIZED`: labels a few pixels off their image (about 2 % per side, within the loaders' tolerance);
  the label is the frame's own, nearest-resized, so it still lines up with the image in proportion;
- `ASPECT`: a label of another aspect ratio (1.5x as tall): a wrong file, refused;
- `BLANK`: an all-black image with a good label (as GTA5's 15188 and 17705);
- `UNLABELLED`: an image whose label is missing;
- and a label without its image, numbered one past the last frame.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

RESIZED = (2, 3)
ASPECT = 4
BLANK = 5
UNLABELLED = 6
MIN_FRAMES = 6
OFF_FRACTION = 0.02  # how far the RESIZED labels are off, per side (at least one pixel)


def _name(number: int) -> str:
    return f"{number:05d}.png"


def _resize_label(path: Path, size: tuple[int, int]) -> None:
    with Image.open(path) as label:
        label.load()
    label.resize(size, Image.NEAREST).save(path)  # a palette PNG stays one, with its palette


def add_gta5_quirks(folder: str | Path, count: int) -> dict[str, list[str]]:
    """Turn frames of the GTA5 copy `folder` (of `count` frames) into the quirks above; returns the
    affected file names per quirk ("resized", "aspect", "blank", "unlabelled", "orphan_label")."""
    folder = Path(folder)
    if count < MIN_FRAMES:
        raise ValueError(f"GTA5 quirks need at least {MIN_FRAMES} frames, got {count}")
    images, labels = folder / "images", folder / "labels"
    with Image.open(images / _name(1)) as first:
        w, h = first.size
    dw, dh = max(1, round(OFF_FRACTION * w)), max(1, round(OFF_FRACTION * h))
    for number in RESIZED:
        _resize_label(labels / _name(number), (w + dw, h - dh))
    _resize_label(labels / _name(ASPECT), (w, round(1.5 * h)))
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(images / _name(BLANK))
    (labels / _name(UNLABELLED)).unlink()
    orphan = labels / _name(count + 1)
    orphan.write_bytes((labels / _name(1)).read_bytes())
    return {"resized": [_name(n) for n in RESIZED], "aspect": [_name(ASPECT)], "blank": [_name(BLANK)],
            "unlabelled": [_name(UNLABELLED)], "orphan_label": [orphan.name]}
