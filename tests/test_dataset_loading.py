"""Loading GTA5, Cityscapes and BDD layouts: shapes, ranges, lists, and the promised errors."""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dataset import DATASETS, NORMALIZE, build_dataset
from dataset.make_lists import make_list
from dataset.synthetic import generate
from dataset.transforms import EvalTransform, TrainTransform
from utils.errors import DatasetError

SPLITS = {"gta5": "train", "cityscapes": "val", "bdd": "val", "synthia": "train"}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    generate(out, num_train=4, num_val=3, size=(64, 32), seed=0)
    return out


@pytest.fixture
def copy(root, tmp_path):
    """A private copy of one domain, for tests that break files."""
    def make(name: str):
        shutil.copytree(root / name, tmp_path / name)
        return tmp_path / name
    return make


@pytest.mark.parametrize("name", DATASETS)
def test_each_layout_loads_normalised_images_and_train_id_labels(root, name):
    ds = build_dataset(name, root / name, SPLITS[name], size=(48, 24))
    assert len(ds) in (3, 4)
    item = ds[0]
    assert item["image"].shape == (3, 24, 48) and item["image"].dtype == torch.float32
    assert item["label"].shape == (24, 48) and item["label"].dtype == torch.int64
    values = set(item["label"].unique().tolist())
    assert values <= set(range(19)) | {255} and len(values - {255}) >= 3
    assert -3.0 < item["image"].min() < item["image"].max() < 3.0  # ImageNet-normalised range
    assert item["name"] == ds.files[0] and ds.image_path(0).is_file() and ds.label_path(0).is_file()


@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("scale_range", [(0.5, 0.7), (1.1, 1.5)], ids=["padded", "cropped"])
def test_mapping_the_kept_pixels_equals_mapping_the_whole_file_first(root, name, scale_range):
    ds = build_dataset(name, root / name, SPLITS[name], size=(48, 24), random_mirror=True, random_scale=True)
    ds.transform.scale_range = scale_range
    for i in range(len(ds)):
        for seed in range(4):
            item = ds[(i, seed)]
            image, raw = ds.load_raw(i)
            expected_image, expected = ds.transform(image, ds.label_lut(raw),
                                                    generator=torch.Generator().manual_seed(seed))
            assert torch.equal(item["image"], expected_image)
            assert item["label"].dtype == torch.int64 and torch.equal(item["label"], expected.long())
    if scale_range[1] < 1:
        assert (item["label"][-1] == 255).all()  # the padded bottom row is ignored


def test_full_label_size_keeps_the_file_resolution(root):
    ds = build_dataset("cityscapes", root / "cityscapes", "val", size=(32, 16), label_size="full")
    item = ds[0]
    assert item["image"].shape == (3, 16, 32) and item["label"].shape == (32, 64)


def test_without_labels_items_have_no_label_and_labels_may_be_missing(copy):
    folder = copy("bdd")
    shutil.rmtree(folder / "labels")
    item = build_dataset("bdd", folder, "val", size=(32, 16), labels=False)[0]
    assert "label" not in item and item["image"].shape == (3, 16, 32)


def test_max_iters_repeats_the_list_to_cover_the_iterations(root):
    ds = build_dataset("cityscapes", root / "cityscapes", "val", size=(32, 16), max_iters=10)
    assert len(ds) == 12 and ds.files[:3] == ds.files[3:6]


def test_normalize_is_the_same_object_in_train_and_eval(root):
    train = build_dataset("gta5", root / "gta5", "train", size=(32, 16), random_mirror=True, random_scale=True)
    val = build_dataset("cityscapes", root / "cityscapes", "val", size=(32, 16))
    assert isinstance(train.transform, TrainTransform) and isinstance(val.transform, EvalTransform)
    assert train.transform.normalize is NORMALIZE and val.transform.normalize is NORMALIZE


def test_make_lists_writes_sorted_relative_paths_and_the_list_loads(root, tmp_path):
    out = tmp_path / "val.txt"
    count = make_list("cityscapes", root / "cityscapes", "val", out)
    lines = out.read_text().splitlines()
    assert count == len(lines) == 3 and lines == sorted(lines)
    assert all(line.startswith("leftImg8bit/val/") for line in lines)
    ds = build_dataset("cityscapes", root / "cityscapes", "val", list_path=out, size=(32, 16))
    assert ds.files == lines


def test_a_user_list_relative_to_the_split_folder_works(root, tmp_path):
    scanned = build_dataset("cityscapes", root / "cityscapes", "val", size=(32, 16)).files
    user = tmp_path / "mine.txt"
    user.write_text("# my list\n" + "\n".join(f.split("/", 2)[2] for f in scanned[::-1][:2]) + "\n\n")
    ds = build_dataset("cityscapes", root / "cityscapes", "val", list_path=user, size=(32, 16))
    assert ds.files == scanned[::-1][:2]


def test_list_entries_starting_with_dot_slash_are_the_same_paths(root, tmp_path):
    scanned = build_dataset("cityscapes", root / "cityscapes", "val", size=(32, 16)).files
    user = tmp_path / "found.txt"  # what `find . -name '*.png'` prints
    user.write_text("".join(f"./{f}\n" for f in scanned))
    ds = build_dataset("cityscapes", root / "cityscapes", "val", list_path=user, size=(32, 16))
    assert ds.files == scanned
    assert ds[0]["label"].shape == (16, 32)


def test_missing_root_names_it_and_the_expected_layout(tmp_path):
    with pytest.raises(DatasetError, match=r"cityscapes dataset root .*nowhere does not exist .*leftImg8bit"):
        build_dataset("cityscapes", tmp_path / "nowhere", "val")


def test_missing_split_folder_is_reported(root):
    with pytest.raises(DatasetError, match=r"bdd split folder .*images/test does not exist"):
        build_dataset("bdd", root / "bdd", "test")


def test_missing_label_reports_count_and_first_path(copy):
    folder = copy("cityscapes")  # GTA5 skips a scanned image without label: tests/test_dataset_quirks.py
    label = next((folder / "gtFine" / "val").rglob("*_labelIds.png"))
    label.unlink()
    with pytest.raises(DatasetError, match=rf"1 of 3 listed cityscapes labels are missing .*first: "
                                           rf"gtFine/val/.*/{label.name}"):
        build_dataset("cityscapes", folder, "val")


def test_empty_list_is_reported(root, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(DatasetError, match=r"list file .*empty\.txt is empty"):
        build_dataset("gta5", root / "gta5", "train", list_path=empty)


def test_listed_image_that_does_not_exist_is_reported(root, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("images/99999.png\n")
    with pytest.raises(DatasetError, match=r"1 of 1 listed gta5 images are missing .*images/99999\.png"):
        build_dataset("gta5", root / "gta5", "train", list_path=bad)


def test_corrupt_png_names_the_file(copy):
    folder = copy("cityscapes")
    image = next((folder / "leftImg8bit" / "val").rglob("*.png"))
    image.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    ds = build_dataset("cityscapes", folder, "val", size=(32, 16))
    with pytest.raises(DatasetError, match=rf"cannot read image .*{image.name}: corrupt"):
        ds[ds.files.index(image.relative_to(folder).as_posix())]


def test_gta5_header_that_cannot_be_read_is_refused_at_start_up(copy):
    folder = copy("gta5")  # GTA5 reads every pair's header when the dataset is built
    (folder / "images" / "00001.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(DatasetError, match=r"cannot read image .*00001\.png: corrupt"):
        build_dataset("gta5", folder, "train", size=(32, 16))


def test_image_and_label_of_different_sizes_are_reported(copy):
    folder = copy("bdd")
    ds = build_dataset("bdd", folder, "val", size=(32, 16))
    Image.new("L", (10, 10)).save(ds.label_path(0))
    with pytest.raises(DatasetError, match=r"image .*\.jpg is 64x36 but its label .*_train_id\.png is 10x10"):
        ds[0]


@pytest.mark.parametrize("name, bad, expected", [("gta5", (200, 40), "[40, 200]"), ("bdd", (19, 254), "[19, 254]")])
def test_label_with_ids_outside_the_table_names_the_file_and_the_ids(copy, name, bad, expected):
    folder = copy(name)
    ds = build_dataset(name, folder, SPLITS[name], size=(32, 16), label_size="full")
    label = np.array(Image.open(ds.label_path(0)))
    label[0, :3] = bad[0]
    label[-1, -1] = bad[1]
    label[1, 0] = 255  # ignore is allowed
    Image.fromarray(label).save(ds.label_path(0))
    message = f"{ds.label_path(0).name} holds ids {expected} outside the {name} table"
    with pytest.raises(DatasetError, match=re.escape(message)):
        ds[0]
    label[np.isin(label, bad)] = 255
    Image.fromarray(label).save(ds.label_path(0))
    label = ds[0]["label"]  # loads once the foreign ids are gone
    assert label[1, 0] == 255 and label[label != 255].max() < 19


def test_unknown_dataset_name_lists_the_known_ones(root):
    with pytest.raises(DatasetError, match="gta5, cityscapes, bdd"):
        build_dataset("kitti", root, "train")


def test_benchmark_loader_prints_a_line_per_layout(synthetic_root, capsys):
    from bench.loader import main

    main(["--root", str(synthetic_root), "--size", "32,16", "--num", "4", "--workers", "0"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "label remap" in ln]
    assert [ln.split()[0] for ln in lines] == ["gta5", "cityscapes", "bdd", "synthia"]
    for ln in lines:
        rates = [float(w) for w in ln.replace(",", " ").split() if w.replace(".", "", 1).isdigit()]
        assert all(r > 0 for r in rates)
