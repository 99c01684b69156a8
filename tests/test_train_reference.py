"""The reference configurations end to end on the synthetic data: each script with the DeepLab-v2 net and with
SYNTHIA as the source, the DeepLab teacher read from its checkpoint, and eval_cs.py's two SYNTHIA protocols."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import eval_cs
import train_gta2cs_multi_drnd22 as student_script
import train_gta2cs_multi_drnd38 as teacher_script
import train_gta2cs_ts_multi as distill_script
from dataset.labels import CLASS_SETS, CLASSES
from model import build_seg_model, save_final
from model.deeplab import ADAPTSEGNET_ARCH, ARCH
from tests.conftest import tiny_train_args
from utils.logger import read_log

SCRIPTS = {"teacher": teacher_script, "student": student_script, "distill": distill_script}


@pytest.fixture(scope="module")
def deeplab_teacher(tmp_path_factory) -> Path:
    """An (untrained) DeepLab-v2 teacher in final.pth form."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "final.pth"
    save_final(path, build_seg_model(ARCH))
    return path


@pytest.mark.parametrize("script, arch", [("teacher", ARCH), ("student", ADAPTSEGNET_ARCH), ("distill", ARCH)])
def test_each_script_trains_the_deeplab_net_with_ten_times_the_rate_on_its_classifiers(
        script, arch, synthetic_root, tmp_path, deeplab_teacher):
    out = tmp_path / "run"
    extra = ["--arch", arch]
    if script == "distill":
        extra += ["--teacher", str(deeplab_teacher), "--paradigm", "both"]
    assert SCRIPTS[script].main([*tiny_train_args(synthetic_root, out, steps=2), *extra]) == 0
    assert [r["step"] for r in read_log(out / "log.jsonl")] == [1, 2]
    final = torch.load(out / "final.pth", weights_only=True)
    assert (final["arch"], final["aux_layer"]) == (arch, 3)  # whatever AUX_LAYER the script sets for its DRN
    groups = torch.load(out / "last.pth", weights_only=True)["optimizer"]["param_groups"]
    assert [g["lr_mult"] for g in groups] == [1.0, 10.0]
    assert groups[1]["lr"] == pytest.approx(10 * groups[0]["lr"]) and groups[0]["lr"] > 0
    bn = "bn1.weight"
    assert torch.equal(final["state_dict"][bn], torch.ones_like(final["state_dict"][bn]))  # frozen at its init


@pytest.mark.parametrize("script", ["teacher", "student", "distill"])
def test_each_script_trains_on_synthia(script, synthetic_root, tmp_path, deeplab_teacher):
    out = tmp_path / "run"
    extra = ["--teacher", str(deeplab_teacher), "--paradigm", "both"] if script == "distill" else []
    if script == "student":  # validation on the way: the SYNTHIA run scores and keeps its best by 16 classes
        extra = ["--eval-every", "2", "--keep-best"]
    assert SCRIPTS[script].main([*tiny_train_args(synthetic_root, out, source="synthia", steps=2), *extra]) == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["source"] == "synthia" and config["data_dir"].endswith("synthia")
    assert (out / "final.pth").is_file()
    if script == "student":
        val = [r for r in read_log(out / "log.jsonl") if "val/mIoU" in r]
        assert {"val/mIoU", "val/mIoU16", "val/mIoU13"} <= set(val[-1])
        best = torch.load(out / "last.pth", weights_only=True)["best_val_mIoU"]
        assert best == pytest.approx(val[-1]["val/mIoU16"])


@pytest.fixture(scope="module")
def synthia_run(synthetic_root, tmp_path_factory) -> Path:
    """A few steps of DRN-D-22 trained on the synthetic SYNTHIA, its run folder (final.pth, config.json)."""
    out = tmp_path_factory.mktemp("synthia") / "run"
    args = [*tiny_train_args(synthetic_root, out, source="synthia", steps=3), "--lambda-adv-aux", "0",
            "--lambda-adv-main", "0", "--learning-rate", "0.01"]
    assert student_script.main(args) == 0
    return out


def _restricted_iou(confusion: np.ndarray, classes: tuple[int, ...]) -> dict[str, float]:
    """IoU per class of a subset, the ground truth of the other classes ignored (written independently)."""
    kept = confusion[list(classes)]  # rows: ground truth
    out = {}
    for row, cls in enumerate(classes):
        tp = kept[row, cls]
        union = kept[row].sum() + kept[:, cls].sum() - tp
        if union > 0:
            out[CLASSES[cls]] = tp / union
    return out


def test_eval_reads_the_source_from_the_run_and_reports_both_synthia_protocols(synthia_run, synthetic_root, capsys,
                                                                              tmp_path):
    summary = eval_cs.main(["--restore-from", str(synthia_run / "final.pth"), "--data-dir",
                            str(synthetic_root / "cityscapes"), "--input-size", "64,32", "--num-workers", "0",
                            "--device", "cpu", "--no-progress", "--json", str(tmp_path / "e.json"), "--csv",
                            str(tmp_path / "e.csv")])
    printed = capsys.readouterr().out
    assert f"classes: synthia16 (the run trained on synthia ({synthia_run / 'config.json'}))" in printed
    confusion = np.array(summary["confusion"], dtype=np.float64)
    for name, label in (("synthia16", "mIoU16"), ("synthia13", "mIoU13")):
        expected = _restricted_iou(confusion, CLASS_SETS[name])
        scores = summary["class_sets"][name]
        assert scores["classes"] == [CLASSES[t] for t in CLASS_SETS[name]]
        assert scores["mIoU"] == pytest.approx(sum(expected.values()) / len(expected))
        line = next(ln for ln in printed.splitlines() if ln.startswith(label))
        assert f"{100 * scores['mIoU']:6.2f}" in line and ", ".join(scores["classes"]) in line
    assert summary["mIoU"] == summary["class_sets"]["synthia16"]["mIoU"]
    assert summary["per_class"]["terrain"] is None and "terrain" in printed and "not in synthia16" in printed
    assert list(summary["class_sets"]) == ["synthia16", "synthia13"]
    assert json.loads((tmp_path / "e.json").read_text())["class_sets"]["synthia13"]["mIoU"] == pytest.approx(
        summary["class_sets"]["synthia13"]["mIoU"])
    rows = {r["class"]: r for r in csv.DictReader((tmp_path / "e.csv").open())}
    assert float(rows["mean_synthia13"]["iou"]) == pytest.approx(summary["class_sets"]["synthia13"]["mIoU"], abs=1e-6)
    assert float(rows["mean"]["iou"]) == pytest.approx(summary["mIoU"], abs=1e-6) and rows["truck"]["iou"] == ""


def test_the_protocol_can_be_asked_for_and_defaults_to_19_classes_without_a_run_folder(synthia_run, synthetic_root,
                                                                                     tmp_path, capsys):
    lone = tmp_path / "final.pth"
    lone.write_bytes((synthia_run / "final.pth").read_bytes())
    common = ["--data-dir", str(synthetic_root / "cityscapes"), "--input-size", "64,32", "--num-workers", "0",
              "--device", "cpu", "--no-progress"]
    plain = eval_cs.main(["--restore-from", str(lone), *common])
    assert plain["protocol"]["classes"] == "cityscapes19" and list(plain["class_sets"]) == ["cityscapes19"]
    asked = eval_cs.main(["--restore-from", str(lone), "--protocol", "synthia13", *common])
    assert list(asked["class_sets"]) == ["synthia13", "synthia16"]
    assert asked["mIoU"] == asked["class_sets"]["synthia13"]["mIoU"]
    assert plain["confusion"] == asked["confusion"]
