"""Real downloads' quirks on synthetic copies: GTA5 pairs a few pixels off, missing labels, another
aspect ratio, --exclude, split.mat, BDD100K in both layouts, and the dataset doctor's report."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

import eval_cs
import train_gta2cs_multi_drnd22 as student_script
from dataset import build_dataset
from dataset.check import main as check_main
from dataset.labels import CITYSCAPES_LUT
from dataset.make_lists import make_list_from_split_mat, split_mat_ids
from dataset.quirks import DatasetWarning, reset_warnings
from dataset.synth_quirks import ASPECT, BLANK, RESIZED, UNLABELLED
from dataset.synthetic import generate
from dataset.transforms import resize_label
from tests.conftest import run_script, tiny_train_args
from utils.cli import run_cli
from utils.errors import DatasetError
from utils.logger import read_log
from utils.predictions import PredictionWriter

SIZE = (32, 16)


@pytest.fixture(autouse=True)
def _fresh_warnings():
    reset_warnings()  # warnings are said once per process; each test starts afresh
    yield
    reset_warnings()


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    """A quirky GTA5 copy (quirky/gta5) and BDD written in both layouts (b2018/bdd, b10k/bdd)."""
    out = tmp_path_factory.mktemp("quirks")
    generate(out / "quirky", num_train=8, num_val=2, size=(64, 32), seed=0, domains=["gta5"], quirks=True)
    generate(out / "b2018", num_train=3, num_val=2, size=(64, 32), seed=0, domains=["bdd"])
    generate(out / "b10k", num_train=3, num_val=2, size=(64, 32), seed=0, domains=["bdd"], bdd_layout="10k")
    return out


@pytest.fixture
def gta5(bench, tmp_path) -> Path:
    """A private copy of the quirky GTA5 folder."""
    return Path(shutil.copytree(bench / "quirky" / "gta5", tmp_path / "gta5"))


def _exclude(tmp_path: Path, *names: str) -> Path:
    path = tmp_path / "exclude.txt"
    path.write_text("# frames to leave out\n" + "".join(f"{n}\n" for n in names))
    return path


def _dataset_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, DatasetWarning)]


def test_pairs_a_few_pixels_off_load_with_one_warning_and_exact_labels(gta5, tmp_path):
    exclude = _exclude(tmp_path, f"{ASPECT:05d}", f"{UNLABELLED:05d}.png")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ds = build_dataset("gta5", gta5, "train", size=SIZE, exclude=exclude)
        build_dataset("gta5", gta5, "train", size=SIZE, exclude=exclude)  # same process: said once
    said = _dataset_warnings(record)
    assert len(said) == 1
    assert said[0].startswith(f"{len(RESIZED)} of 6 gta5 images") and "00002: image 64x35, label 65x34" in said[0]
    index = ds.files.index(f"images/{RESIZED[0]:05d}.png")
    item = ds[index]
    assert item["image"].shape == (3, 16, 32) and item["label"].shape == (16, 32)
    raw = torch.from_numpy(np.array(Image.open(ds.label_path(index))))
    expected = torch.from_numpy(CITYSCAPES_LUT)[resize_label(raw, (16, 32)).long()]
    assert torch.equal(item["label"], expected.long())


def _two_colour_pair(folder: Path, number: int, image_wh: tuple[int, int], label_wh: tuple[int, int]) -> None:
    """An image red left of its middle and blue right of it; a label of another size with road (id 7)
    left of its middle and car (id 26) right of it."""
    w, h = image_wh
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2, 0] = 255
    image[:, w // 2:, 2] = 255
    Image.fromarray(image).save(folder / "images" / f"{number:05d}.png")
    lw, lh = label_wh
    label = np.full((lh, lw), 26, np.uint8)
    label[:, : lw // 2] = 7
    Image.fromarray(label).save(folder / "labels" / f"{number:05d}.png")


@pytest.mark.parametrize("preset", ["eval", "train"])
def test_the_loss_sees_labels_aligned_with_the_resized_image(tmp_path, preset):
    folder = tmp_path / "gta5"
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir()
    _two_colour_pair(folder, 1, (60, 40), (62, 39))  # 3.3 % and 2.5 % off
    _two_colour_pair(folder, 2, (60, 40), (60, 40))
    train = preset == "train"
    with pytest.warns(DatasetWarning, match="1 of 2 gta5 images"):
        ds = build_dataset("gta5", folder, "train", size=(30, 20), random_scale=train, random_mirror=train)
    for seed in range(4 if train else 1):
        item = ds[(0, seed)]
        image, label = item["image"], item["label"]
        red, blue = image[0] > image[2] + 1, image[2] > image[0] + 1  # normalised: away from the edge only
        assert red.sum() > 50 and blue.sum() > 50
        assert (label[red] == 0).all() and (label[blue] == 13).all()  # road under red, car under blue


def test_another_aspect_ratio_is_refused_at_start_up_naming_the_file(gta5):
    with pytest.raises(DatasetError, match=rf"labels/{ASPECT:05d}\.png: image 64x35, label 64x52 .*--exclude"):
        build_dataset("gta5", gta5, "train", size=SIZE)


def test_missing_label_is_skipped_with_a_warning_when_scanning_and_refused_when_listed(gta5, tmp_path):
    (gta5 / "labels" / f"{ASPECT:05d}.png").unlink()  # now only images without label remain as quirks
    with pytest.warns(DatasetWarning, match=rf"2 of 8 gta5 images .* have no label and are left out "
                                            rf"\(first: images/{ASPECT:05d}\.png, images/{UNLABELLED:05d}\.png"):
        ds = build_dataset("gta5", gta5, "train", size=SIZE)
    assert len(ds) == 6 and f"images/{UNLABELLED:05d}.png" not in ds.files
    listed = tmp_path / "list.txt"
    listed.write_text(f"images/00001.png\nimages/{UNLABELLED:05d}.png\n")
    with pytest.raises(DatasetError, match=rf"1 of 2 listed gta5 labels are missing .*labels/{UNLABELLED:05d}"):
        build_dataset("gta5", gta5, "train", list_path=listed)


def test_exclude_matches_stems_names_and_paths_and_says_what_matched_nothing(gta5, tmp_path):
    exclude = _exclude(tmp_path, f"{ASPECT:05d}", f"./images/{BLANK:05d}.png", f"{UNLABELLED:05d}.png", "99999")
    with pytest.warns(DatasetWarning) as record:
        ds = build_dataset("gta5", gta5, "train", size=SIZE, exclude=exclude)
    assert sorted(ds.files) == [f"images/{n:05d}.png" for n in (1, 2, 3, 7, 8)]
    assert any("1 entries of" in m and "(first: 99999)" in m for m in _dataset_warnings(record))
    with pytest.raises(DatasetError, match=r"--exclude .*nope\.txt: no such file"):
        build_dataset("gta5", gta5, "train", exclude=tmp_path / "nope.txt")


def test_full_size_labels_keep_their_own_size_on_a_mismatched_pair(gta5, tmp_path):
    exclude = _exclude(tmp_path, f"{ASPECT:05d}")
    with pytest.warns(DatasetWarning):
        ds = build_dataset("gta5", gta5, "train", size=SIZE, label_size="full", exclude=exclude)
    item = ds[ds.files.index(f"images/{RESIZED[0]:05d}.png")]
    assert item["image"].shape == (3, 16, 32) and item["label"].shape == (34, 65)


def _bdd_items(ds) -> dict[str, torch.Tensor]:
    return {ds.layout.stem(ds.files[i]): ds[i]["label"] for i in range(len(ds))}


def test_bdd_both_layouts_give_the_same_items_and_train_ids(bench, tmp_path):
    holder = tmp_path / "holder"  # a folder holding the 2018 download's seg/
    holder.mkdir()
    (holder / "seg").symlink_to(bench / "b2018" / "bdd", target_is_directory=True)
    roots = {"2018": [bench / "b2018" / "bdd", holder],
             "10k": [bench / "b10k" / "bdd", bench / "b10k" / "bdd" / "bdd100k"]}
    reference = None
    for variant, paths in roots.items():
        for root in paths:
            ds = build_dataset("bdd", root, "val", size=SIZE)
            assert ds.layout.variant == variant, root
            items = _bdd_items(ds)
            reference = reference or items
            assert items.keys() == reference.keys() and len(items) == 2
            assert all(torch.equal(items[k], reference[k]) for k in items)
    assert (bench / "b10k" / "bdd" / "bdd100k" / "labels" / "sem_seg" / "masks" / "val"
            / f"{next(iter(reference))}.png").is_file()


def test_bdd_root_without_images_names_both_layouts(tmp_path):
    with pytest.raises(DatasetError, match=r"holds no BDD100K images .*bdd100k/images/10k/SPLIT.*seg/images/SPLIT"):
        build_dataset("bdd", tmp_path, "val")


@pytest.mark.parametrize("variant, suffix", [("b2018", "_train_id.png"), ("b10k", ".png")])
def test_bdd_predictions_are_named_as_the_labels_of_their_layout(bench, tmp_path, variant, suffix):
    ds = build_dataset("bdd", bench / variant / "bdd", "val", size=SIZE)
    writer = PredictionWriter(tmp_path / "pred", "bdd", layout=ds.layout, color=False)
    entry = writer.write(ds.files[0], torch.zeros(16, 32, dtype=torch.uint8))
    assert Path(entry["result"]).name == ds.label_path(0).name == f"{ds.layout.stem(ds.files[0])}{suffix}"


def test_split_mat_lists_the_official_split_and_leaves_out_missing_frames(gta5, tmp_path, capsys):
    mat = tmp_path / "split.mat"
    scipy.io.savemat(mat, {"trainIds": np.array([[1], [2], [UNLABELLED], [99]], np.uint16),
                           "valIds": np.array([[7], [8]], np.float64), "testIds": np.array([[3]])})
    assert split_mat_ids(mat, "val") == [7, 8]
    count, missing = make_list_from_split_mat(gta5, mat, "train", tmp_path / "train.txt")
    assert (count, missing) == (2, [f"images/{UNLABELLED:05d}.png", "images/00099.png"])
    assert (tmp_path / "train.txt").read_text() == "images/00001.png\nimages/00002.png\n"
    from dataset.make_lists import main
    assert run_cli(main, ["--dataset", "gta5", "--root", str(gta5), "--split-mat", str(mat), "--split", "val",
                          "--out", str(tmp_path / "val.txt")]) == 0
    assert (tmp_path / "val.txt").read_text() == "images/00007.png\nimages/00008.png\n"
    scipy.io.savemat(mat, {"ids": np.array([1])})
    with pytest.raises(DatasetError, match=r"no variable 'trainIds' \(found ids; expected trainIds"):
        split_mat_ids(mat, "train")


def _doctor(capsys, *argv: str) -> tuple[int, str, str]:
    status = run_cli(check_main, [*argv, "--no-progress"])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_doctor_reports_every_gta5_quirk_and_refuses_the_copy(gta5, capsys):
    status, out, err = _doctor(capsys, "--dataset", "gta5", "--root", str(gta5), "--full")
    assert status == 2
    assert err.count("\n") == 1 and err.endswith(
        f": error: the loaders cannot train on {gta5}: 1 pairs differ in size beyond what the loaders resize "
        f"(first: labels/{ASPECT:05d}.png)\n")
    assert "split all: 8 images, 8 labels, 7 pairs" in out and "image sizes: 64x35: 8" in out
    assert "2 pairs differ in size by at most 5 % a side -> resized" in out
    assert "images/00002.png: image 64x35, label 65x34 (+1, -1 px; 2.9 %)" in out
    assert "1 pairs differ in size by more than 5 % -> REFUSED" in out and "label 64x52 (+0, +17 px" in out
    assert "1 images without label -> left out when the folder is scanned" in out
    assert "1 labels without image -> ignored: labels/00009.png" in out
    assert "1 blank images (one colour) -> trained on as they are" in out and f"{BLANK:05d}.png" in out


def test_doctor_passes_the_copy_once_the_wrong_label_is_gone(gta5, capsys):
    (gta5 / "labels" / f"{ASPECT:05d}.png").unlink()
    status, out, err = _doctor(capsys, "--dataset", "gta5", "--root", str(gta5))
    assert status == 0 and err == ""
    assert "2 images without label -> left out" in out and out.strip().endswith("(6 labelled pairs)")


def test_doctor_on_bdd_layouts_cityscapes_gaps_and_unreadable_files(bench, tmp_path, capsys):
    for root in (bench / "b2018" / "bdd", bench / "b10k" / "bdd"):
        status, out, _ = _doctor(capsys, "--dataset", "bdd", "--root", str(root), "--full")
        assert status == 0 and "split train: 3 images, 3 labels, 3 pairs" in out and "split val: 2 images" in out
    bdd = Path(shutil.copytree(bench / "b10k" / "bdd", tmp_path / "bdd"))
    image = next((bdd / "bdd100k" / "images" / "10k" / "val").glob("*.jpg"))
    image.write_bytes(b"not a jpeg")
    label = bdd / "bdd100k" / "labels" / "sem_seg" / "masks" / "val" / f"{image.stem}.png"
    status, out, err = _doctor(capsys, "--dataset", "bdd", "--root", str(bdd))
    assert status == 2 and "1 files cannot be read -> REFUSED" in out and image.name in err
    image.unlink()
    other = next((bdd / "bdd100k" / "labels" / "sem_seg" / "masks" / "val").glob("*.png"))
    other = other if other != label else sorted(other.parent.glob("*.png"))[-1]
    ids = np.array(Image.open(other))
    ids[0, 0] = 40
    Image.fromarray(ids).save(other)
    status, out, err = _doctor(capsys, "--dataset", "bdd", "--root", str(bdd))  # headers only: ids unread
    assert status == 0 and "1 labels without image -> ignored" in out
    status, out, err = _doctor(capsys, "--dataset", "bdd", "--root", str(bdd), "--full")
    assert status == 2 and f"{other.name}: [40]" in out and "labels hold undefined ids" in err
    status, out, err = _doctor(capsys, "--dataset", "cityscapes", "--root", str(tmp_path / "nope"))
    assert status == 2 and "nope does not exist" in err and out == ""


def test_training_runs_through_the_quirky_gta5_copy_with_one_warning(bench, tmp_path):
    exclude = _exclude(tmp_path, f"{ASPECT:05d}", f"{UNLABELLED:05d}")
    target = ["--target", "bdd", "--data-dir-target", str(bench / "b10k" / "bdd")]
    args = [*tiny_train_args(bench / "quirky", tmp_path / "run", steps=2), *target]
    args[args.index("--num-workers") + 1] = "2"  # workers do not repeat the warning
    result = run_script("train_gta2cs_multi_drnd22.py", *args, "--exclude", str(exclude))
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(said) == 1 and said[0].startswith("warning: 2 of 6 gta5 images") and "differ in size" in said[0]
    assert [r["step"] for r in read_log(tmp_path / "run" / "log.jsonl")] == [1, 2]
    with pytest.raises(DatasetError, match=rf"labels/{ASPECT:05d}\.png: image 64x35, label 64x52"):
        student_script.main([*tiny_train_args(bench / "quirky", tmp_path / "run2", steps=2), *target])
    assert not (tmp_path / "run2").exists()


def test_bdd_in_todays_layout_trains_and_evaluates(bench, tmp_path):
    bdd = bench / "b10k" / "bdd"  # holds bdd100k/
    args = [*tiny_train_args(bench / "b10k", tmp_path / "run", source="bdd", steps=2), "--target", "bdd",
            "--data-dir-target", str(bdd), "--batch-size", "1"]
    assert student_script.main(args) == 0
    pred = tmp_path / "pred"
    summary = eval_cs.main(["--restore-from", str(tmp_path / "run" / "final.pth"), "--dataset", "bdd",
                            "--data-dir", str(bdd), "--input-size", "64,32", "--num-workers", "0", "--device", "cpu",
                            "--no-progress", "--save-pred", str(pred)])
    assert summary["num_images"] == 2 and 0 <= summary["pixel_acc"] <= 1
    masks = bdd / "bdd100k" / "labels" / "sem_seg" / "masks" / "val"
    assert sorted(p.name for p in (pred / "trainIds").iterdir()) == sorted(p.name for p in masks.iterdir())
