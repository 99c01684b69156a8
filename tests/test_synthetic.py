"""The synthetic benchmark: deterministic, real layouts, names and label encodings, a domain look."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset.labels import CITYSCAPES_LUT
from dataset.synthetic import generate

CITYSCAPES_NAME = re.compile(r"(\w+)_(\d{6})_(\d{6})_leftImg8bit.png")
LABEL_IDS = {0, 1, 7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33}


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    generate(out, num_train=6, num_val=3, size=(64, 32), seed=3)
    return out


def test_same_seed_gives_identical_bytes_and_another_seed_differs(bench, tmp_path):
    generate(tmp_path / "a", num_train=6, num_val=3, size=(64, 32), seed=3)
    generate(tmp_path / "b", num_train=6, num_val=3, size=(64, 32), seed=4)
    same, other = files(tmp_path / "a"), files(tmp_path / "b")
    assert files(bench) == same
    assert all(same[k] != other[k] for k in same.keys() & other.keys() if k.endswith("images/00001.png"))
    assert any(same[k] != other[k] for k in same.keys() & other.keys())


def test_cityscapes_layout_names_and_label_ids(bench):
    root = bench / "cityscapes"
    for split, count in (("train", 6), ("val", 3)):
        images = sorted((root / "leftImg8bit" / split).glob("*/*"))
        assert len(images) == count
        for image in images:
            match = CITYSCAPES_NAME.fullmatch(image.name)
            assert match and match.group(1) == image.parent.name
            label = root / "gtFine" / split / image.parent.name / image.name.replace(
                "_leftImg8bit.png", "_gtFine_labelIds.png")
            ids = np.array(Image.open(label))
            assert ids.shape == (32, 64) == Image.open(image).size[::-1]
            assert set(np.unique(ids)) <= LABEL_IDS


def test_gta5_layout_with_palette_label_ids(bench):
    images = sorted((bench / "gta5" / "images").iterdir())
    assert [p.name for p in images] == [f"{i:05d}.png" for i in range(1, 7)]
    label = Image.open(bench / "gta5" / "labels" / "00001.png")
    assert label.mode == "P" and label.size == Image.open(images[0]).size == (64, 35)
    assert set(np.unique(np.array(label))) <= LABEL_IDS


def test_bdd_layout_jpeg_images_and_train_id_labels(bench):
    root = bench / "bdd"
    for split, count in (("train", 6), ("val", 3)):
        images = sorted((root / "images" / split).iterdir())
        assert len(images) == count and all(p.suffix == ".jpg" for p in images)
        assert Image.open(images[0]).format == "JPEG"
        for image in images:
            ids = np.array(Image.open(root / "labels" / split / f"{image.stem}_train_id.png"))
            assert ids.shape == (36, 64)
            assert set(np.unique(ids)) <= set(range(19)) | {255}


def test_at_least_twelve_classes_appear(bench):
    seen = set()
    for label in (bench / "cityscapes" / "gtFine").rglob("*.png"):
        seen |= set(CITYSCAPES_LUT[np.unique(np.array(Image.open(label)))].tolist())
    for label in (bench / "gta5" / "labels").glob("*.png"):
        seen |= set(CITYSCAPES_LUT[np.unique(np.array(Image.open(label)))].tolist())
    assert len(seen - {255}) >= 12


def test_source_and_target_look_different(bench):
    def saturation(paths):
        rgb = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) for p in paths])
        return (rgb.max(-1) - rgb.min(-1)).mean()
    gta = saturation(sorted((bench / "gta5" / "images").glob("*.png")))
    city = saturation(sorted((bench / "cityscapes" / "leftImg8bit" / "train").rglob("*.png")))
    assert gta > 1.5 * city  # the "rendered game" source is far more saturated


def test_command_line_writes_the_four_domains(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dataset.synthetic", "--out", str(tmp_path), "--num-train", "2",
                             "--num-val", "1", "--size", "32,16"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in tmp_path.iterdir()} == {"gta5", "cityscapes", "bdd", "synthia"}
    bad = subprocess.run([sys.executable, "-m", "dataset.synthetic", "--out", str(tmp_path), "--size", "x"],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert bad.returncode == 2 and "size" in bad.stderr
