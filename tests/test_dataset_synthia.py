"""SYNTHIA-RAND-CITYSCAPES as downloaded: 16-bit labels with the class id in the first channel, the field's id
mapping to 16 Cityscapes classes, the loader, the doctor, and the synthetic copy written like the real files."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dataset import build_dataset
from dataset.check import main as check_main
from dataset.decode import read_synthia_label
from dataset.labels import CLASS_SETS, CLASSES, SYNTHIA_CLASSES, SYNTHIA_LUT
from dataset.synthetic import png16_bytes
from tests.conftest import run_script
from utils.cli import run_cli
from utils.errors import DatasetError


def _label(path: Path, ids: np.ndarray, instances: np.ndarray | None = None) -> Path:
    channels = [ids, np.zeros_like(ids) if instances is None else instances, np.zeros_like(ids)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png16_bytes(np.stack(channels, -1).astype(np.uint16)))
    return path


def test_the_class_id_is_the_first_16_bit_channel_whatever_the_instance_ids(tmp_path):
    ids = np.arange(23, dtype=np.uint16).repeat(3).reshape(3, 23)
    instances = np.full_like(ids, 0x1234)  # high bytes set: an 8-bit reading would see other numbers
    got = read_synthia_label(_label(tmp_path / "0000000.png", ids, instances))
    assert got.dtype == torch.uint8 and got.shape == (3, 23)
    assert torch.equal(got, torch.from_numpy(ids.astype(np.uint8)))


def test_the_field_mapping_gives_16_classes_and_ignores_the_rest():
    mapped = {SYNTHIA_CLASSES[i]: int(SYNTHIA_LUT[i]) for i in range(len(SYNTHIA_CLASSES))}
    named = {k: CLASSES[v] for k, v in mapped.items() if v != 255}
    assert named == {"sky": "sky", "building": "building", "road": "road", "sidewalk": "sidewalk", "fence": "fence",
                     "vegetation": "vegetation", "pole": "pole", "car": "car", "traffic sign": "traffic sign",
                     "pedestrian": "person", "bicycle": "bicycle", "motorcycle": "motorcycle",
                     "traffic light": "traffic light", "rider": "rider", "bus": "bus", "wall": "wall"}
    assert sorted(k for k, v in mapped.items() if v == 255) == [
        "lanemarking", "parking-slot", "road-work", "terrain", "train", "truck", "void"]
    assert set(CLASS_SETS["synthia16"]) == {CLASSES.index(c) for c in named.values()}
    dropped = sorted(set(CLASS_SETS["synthia16"]) - set(CLASS_SETS["synthia13"]))
    assert [CLASSES[t] for t in dropped] == ["wall", "fence", "pole"]


def test_other_label_files_are_refused_with_the_file_named(tmp_path):
    big = _label(tmp_path / "big.png", np.full((2, 2), 300, np.uint16))
    with pytest.raises(DatasetError, match=r"big\.png holds class id 300"):
        read_synthia_label(big)
    colour = tmp_path / "colour.png"
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(colour)  # GT/COLOR: 8-bit RGB
    with pytest.raises(DatasetError, match=r"colour\.png must be a SYNTHIA GT/LABELS PNG .*GT/COLOR"):
        read_synthia_label(colour)
    grey = tmp_path / "grey.png"
    Image.fromarray(np.array([[3, 21]], np.uint8)).save(grey)  # a converted copy: 8-bit ids
    assert read_synthia_label(grey).tolist() == [[3, 21]]


def test_the_synthetic_copy_is_written_like_the_real_one(synthetic_root):
    root = synthetic_root / "synthia"
    images = sorted((root / "RGB").iterdir())
    assert [p.name for p in images] == [f"{i:07d}.png" for i in range(8)]
    label = root / "GT" / "LABELS" / images[0].name
    header = label.read_bytes()[16:26]
    assert (header[8], header[9]) == (16, 2)  # bit depth 16, colour type RGB
    with Image.open(images[0]) as image:
        assert image.size == (64, 38) and image.mode == "RGB"
    ids = read_synthia_label(label)
    assert ids.shape == (38, 64) and int(ids.max()) <= 22 and len(ids.unique()) >= 5


def test_the_loader_maps_ids_and_finds_the_download_folder(synthetic_root, tmp_path):
    dataset = build_dataset("synthia", synthetic_root / "synthia", "train", size=(64, 38))
    assert len(dataset) == 8
    item = dataset[0]
    raw = read_synthia_label(dataset.label_path(0)).long()
    assert torch.equal(item["label"], torch.from_numpy(SYNTHIA_LUT.astype(np.int64))[raw])
    assert set(item["label"].unique().tolist()) <= set(CLASS_SETS["synthia16"]) | {255}
    parent = tmp_path / "SYNTHIA"
    shutil.copytree(synthetic_root / "synthia", parent / "RAND_CITYSCAPES")
    assert len(build_dataset("synthia", parent, "train", size=(64, 38))) == 8


def test_the_doctor_reads_synthia_and_refuses_colour_labels(synthetic_root, tmp_path, capsys):
    assert run_cli(check_main, ["--dataset", "synthia", "--root", str(synthetic_root / "synthia"), "--full",
                                "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "split all: 8 images, 8 labels, 8 pairs" in out and "ok: the loaders can train on" in out
    copy = tmp_path / "synthia"
    shutil.copytree(synthetic_root / "synthia", copy)
    Image.fromarray(np.zeros((38, 64, 3), np.uint8)).save(copy / "GT" / "LABELS" / "0000003.png")
    result = run_script("-m", "dataset.check", "--dataset", "synthia", "--root", str(copy), "--full", "--no-progress")
    assert result.returncode == 2
    assert "0000003.png must be a SYNTHIA GT/LABELS PNG" in result.stdout + result.stderr


def test_the_decode_benchmark_prints_a_line_per_reader(capsys):
    from bench.synthia_decode import main

    assert main(["--repeat", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("1 thread") and "1280x760" in lines[0]
    assert lines[1].startswith("torchvision (used)") and lines[1].endswith("ids right")
    assert any(line.startswith("Pillow") for line in lines)
