"""Figures: per-class IoU bars, confusion matrix, qualitative grid, and the CLI, as valid PNG files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset.labels import CLASSES, LABEL_IDS
from utils import figures
from utils.errors import ConfigError


def fake_result(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    per_class = {name: float(v) for name, v in zip(CLASSES, rng.uniform(0, 1, len(CLASSES)))}
    per_class["train"] = None  # a class without a score has no bar
    confusion = rng.integers(0, 100, (19, 19))
    return {"mIoU": float(np.mean([v for v in per_class.values() if v is not None])), "per_class": per_class,
            "confusion": confusion.tolist()}


def assert_png(path: Path) -> None:
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 100 and img.size[1] > 100


def test_per_class_bars_and_confusion(tmp_path):
    bars = figures.plot_per_class_iou([fake_result(0), fake_result(1), fake_result(2)],
                                      ["teacher", "student", "DAKD student"], tmp_path / "bars.png")
    conf = figures.plot_confusion(np.asarray(fake_result(0)["confusion"]), tmp_path / "sub" / "conf.png")
    assert_png(bars)
    assert_png(conf)


def test_confusion_rows_are_normalised_and_empty_rows_stay_zero():
    mat = np.array([[2, 2, 0], [0, 0, 0], [1, 0, 3]])
    norm = figures.normalize_confusion(mat)
    assert np.allclose(norm.sum(axis=1), [1, 0, 1]) and norm[0, 0] == 0.5


def test_qualitative_grid_takes_id_maps_and_colour_images(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"image": rng.integers(0, 255, (32, 64, 3), dtype=np.uint8), "gt": rng.integers(0, 19, (32, 64)),
             "preds": [rng.integers(0, 19, (32, 64)), rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)]}
            for _ in range(2)]
    assert_png(figures.plot_qualitative_grid(rows, ["teacher", "student"], tmp_path / "grid.png"))
    with pytest.raises(ConfigError, match="predictions"):
        figures.plot_qualitative_grid(rows, ["only one"], tmp_path / "bad.png")


def write_pred_dir(root: Path, tmp_path: Path, names: list[str], seed: int) -> Path:
    """A folder shaped like eval_cs.py --save-pred output (colour PNGs + manifest)."""
    rng = np.random.default_rng(seed)
    items = []
    for name in names:
        image = tmp_path / "images" / f"{name}_leftImg8bit.png"
        label = tmp_path / "labels" / f"{name}_gtFine_labelIds.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        label.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)).save(image)
        Image.fromarray(rng.choice(LABEL_IDS, (32, 64)).astype(np.uint8)).save(label)
        color = root / "color" / f"{name}.png"
        color.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)).save(color)
        items.append({"name": name, "image_file": str(image), "label_file": str(label), "color": str(color)})
    (root / "manifest.json").write_text(json.dumps({"dataset": "cityscapes", "items": items}))
    return root


def test_cli_writes_every_figure(tmp_path, capsys):
    paths = []
    for k, label in enumerate(("teacher", "student")):
        path = tmp_path / f"{label}.json"
        path.write_text(json.dumps(fake_result(k)))
        paths.append(str(path))
    names = ["aachen_000000_000019", "bonn_000001_000020"]
    preds = [str(write_pred_dir(tmp_path / f"pred{k}", tmp_path, names, k)) for k in range(2)]
    written = figures.main(["--json", *paths, "--labels", "teacher", "student", "--out", str(tmp_path / "figs"),
                            "--pred-dirs", *preds, "--num-images", "2"])
    assert sorted(p.name for p in written) == ["confusion_student.png", "confusion_teacher.png",
                                               "per_class_iou.png", "qualitative.png"]
    for p in written:
        assert_png(p)
    assert "per_class_iou.png" in capsys.readouterr().out


def test_grid_rows_pair_each_shared_image_with_its_train_id_label_and_every_prediction(tmp_path):
    from dataset.labels import CITYSCAPES_LUT

    first = write_pred_dir(tmp_path / "pred0", tmp_path, ["aachen_000000_000019", "bonn_000001_000020"], 0)
    second = write_pred_dir(tmp_path / "pred1", tmp_path, ["bonn_000001_000020", "dusseldorf_000002_000021"], 1)
    (row,) = figures.grid_rows_from_pred_dirs([first, second], num_images=4)  # bonn alone is in both

    def read(path: Path) -> np.ndarray:
        return np.asarray(Image.open(path))

    name = "bonn_000001_000020"
    assert np.array_equal(row["image"], read(tmp_path / "images" / f"{name}_leftImg8bit.png"))
    assert np.array_equal(row["gt"], CITYSCAPES_LUT[read(tmp_path / "labels" / f"{name}_gtFine_labelIds.png")])
    assert [p.tolist() for p in row["preds"]] == [read(d / "color" / f"{name}.png").tolist() for d in (first, second)]


def test_cli_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        figures.main(["--json", str(tmp_path / "missing.json"), "--out", str(tmp_path)])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ConfigError, match="not an eval_cs.py result"):
        figures.main(["--json", str(bad), "--out", str(tmp_path)])
    good = tmp_path / "good.json"
    good.write_text(json.dumps(fake_result(0)))
    with pytest.raises(ConfigError, match="--labels"):
        figures.main(["--json", str(good), "--labels", "a", "b", "--out", str(tmp_path)])
