"""predict.py: one colour mask and one overlay per input image, at the image's own size; clear errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import predict
from model import build_seg_model, save_final
from utils.cli import run_cli
from utils.errors import ConfigError, DatasetError


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "final.pth"
    save_final(str(path), build_seg_model("drn_d_22"))
    return path


@pytest.fixture()
def image_folder(synthetic_root, tmp_path) -> Path:
    """Three Cityscapes PNGs at the top and three BDD JPEGs (another size) in a sub-folder."""
    folder = tmp_path / "frames"
    (folder / "sub").mkdir(parents=True)
    for p in sorted((synthetic_root / "cityscapes" / "leftImg8bit" / "val").glob("*/*.png"))[:3]:
        shutil.copy(p, folder / p.name)
    for p in sorted((synthetic_root / "bdd" / "images" / "val").glob("*.jpg"))[:3]:
        shutil.copy(p, folder / "sub" / p.name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def run(checkpoint: Path, inp: Path, out: Path, *extra: str) -> list[dict]:
    return predict.main(["--restore-from", str(checkpoint), "--input", str(inp), "--out", str(out),
                         "--input-size", "32,16", "--device", "cpu", "--no-progress", *extra])


def test_folder_gives_one_mask_and_one_overlay_per_image(checkpoint, image_folder, tmp_path):
    out = tmp_path / "out"
    entries = run(checkpoint, image_folder, out)
    inputs = sorted(p.relative_to(image_folder).with_suffix("").as_posix()
                    for p in image_folder.rglob("*") if p.suffix in (".png", ".jpg"))
    assert len(entries) == len(inputs) == 6
    for sub in ("color", "overlay"):
        written = sorted(p.relative_to(out / sub).with_suffix("").as_posix() for p in (out / sub).rglob("*.png"))
        assert written == inputs
    for rel in inputs:
        src = next(image_folder.glob(f"{rel}.*"))
        mask = np.asarray(Image.open(out / "color" / f"{rel}.png"))
        assert mask.shape == (*np.asarray(Image.open(src)).shape[:2], 3)  # the image's own size
    assert len(json.loads((out / "manifest.json").read_text())["items"]) == 6


def test_single_image_with_label_ids_and_flip(checkpoint, image_folder, tmp_path):
    from dataset.decode import read_image
    from dataset.labels import TRAIN_ID_TO_LABEL_ID
    from utils.evaluate import load_net

    image = sorted(image_folder.glob("*.png"))[0]
    out = tmp_path / "out"
    entries = run(checkpoint, image, out, "--label-ids", "--flip")
    assert len(entries) == 1
    ids = np.asarray(Image.open(entries[0]["label_ids"]))
    # the label ids of the flip-averaged prediction at the image's size (the plain one differs)
    net, pixels = load_net(str(checkpoint)), read_image(image)
    flipped = predict.segment_image(net, pixels, (32, 16), torch.device("cpu"), flip=True).numpy()
    plain = predict.segment_image(net, pixels, (32, 16), torch.device("cpu")).numpy()
    assert np.array_equal(ids, np.asarray(TRAIN_ID_TO_LABEL_ID)[flipped]) and not np.array_equal(flipped, plain)
    assert (out / "overlay" / f"{image.stem}.png").is_file()


@pytest.mark.parametrize("flags", [("--fold-bn",), ("--channels-last",), ("--fold-bn", "--channels-last")])
def test_fast_paths_write_the_same_label_ids(checkpoint, image_folder, tmp_path, flags):
    image = sorted(image_folder.glob("*.png"))[0]
    plain = run(checkpoint, image, tmp_path / "plain", "--label-ids")[0]
    fast = run(checkpoint, image, tmp_path / "fast", "--label-ids", *flags)[0]
    a, b = (np.asarray(Image.open(e["label_ids"])) for e in (plain, fast))
    assert a.shape == b.shape and (a == b).mean() > 0.999


def test_unsupported_or_missing_input_is_one_line_exit_2(checkpoint, image_folder, tmp_path, capsys):
    for bad in (image_folder / "notes.txt", tmp_path / "missing"):
        status = run_cli(predict.main, ["--restore-from", str(checkpoint), "--input", str(bad), "--out",
                                        str(tmp_path / "o")])
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and len(err) == 1 and str(bad) in err[0]


def test_empty_folder_is_a_dataset_error(checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        run(checkpoint, tmp_path / "empty", tmp_path / "out")


def test_video_without_a_reader_says_how_to_extract_frames(checkpoint, tmp_path, monkeypatch):
    import torchvision.io

    monkeypatch.delattr(torchvision.io, "read_video", raising=False)
    video = tmp_path / "drive.mp4"
    video.write_bytes(b"\x00")
    with pytest.raises(ConfigError, match="ffmpeg"):
        run(checkpoint, video, tmp_path / "out")


def test_two_inputs_with_one_output_name_are_refused(checkpoint, image_folder, tmp_path):
    src = sorted(image_folder.glob("*.png"))[0]
    Image.open(src).convert("RGB").save(image_folder / f"{src.stem}.jpg")
    with pytest.raises(DatasetError, match="same output name"):
        run(checkpoint, image_folder, tmp_path / "out")


def test_alpha_out_of_range_is_a_config_error(checkpoint, image_folder, tmp_path):
    with pytest.raises(ConfigError, match="--alpha"):
        run(checkpoint, image_folder, tmp_path / "out", "--alpha", "1.5")
