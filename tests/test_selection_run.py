"""Checkpoint selection in a training run: the signals at every --eval-every, a target without labels, the
source hold-out never drawn by training, the file --select keeps, and each criterion's best across resumes."""
from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

import train_gta2cs_multi_drnd22 as student_script
from tests.conftest import tiny_train_args
from utils.config import TrainConfig
from utils.criteria import CRITERIA, ENTROPY, LABEL_FREE, SOURCE_MIOU
from utils.errors import ConfigError
from utils.logger import read_log
from utils.select import select_runs
from utils.validation import check_selection

HOST = ["--num-workers", "0", "--no-progress", "--device", "cpu"]


def _net(path):
    state = torch.load(path, weights_only=True)
    return state["state_dict"] if "state_dict" in state else state["net"]


def _same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def unlabelled_target(synthetic_root, tmp_path):
    """The synthetic Cityscapes with its images only: no label file exists."""
    root = tmp_path / "cityscapes_images"
    shutil.copytree(synthetic_root / "cityscapes" / "leftImg8bit", root / "leftImg8bit")
    return root


def test_a_target_without_labels_trains_and_selects_opening_no_target_label(synthetic_root, unlabelled_target,
                                                                               tmp_path, monkeypatch):
    import dataset.base

    real_label_path = dataset.base.SegmentationDataset.label_path
    opened = []

    def label_path(self, index):  # every label is read through its path
        path = real_label_path(self, index)
        opened.append(str(path))
        assert str(unlabelled_target) not in str(path), f"a target label was looked up: {path}"
        return path

    monkeypatch.setattr(dataset.base.SegmentationDataset, "label_path", label_path)
    out = tmp_path / "run"
    args = [*tiny_train_args(synthetic_root, out, steps=4), "--data-dir-target", str(unlabelled_target),
            "--val-split", "none", "--eval-every", "2", "--source-holdout", "2", "--select", "entropy"]
    assert student_script.main(args) == 0
    assert opened and all("gta5" in p for p in opened)  # source labels: training and the hold-out
    records = [r for r in read_log(out / "log.jsonl") if ENTROPY in r]
    assert [r["step"] for r in records] == [2, 4]
    assert all("val/mIoU" not in r and SOURCE_MIOU in r for r in records)
    assert (out / "selected_entropy.pth").is_file() and not (out / "selected_oracle.pth").exists()
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = event_accumulator.EventAccumulator(str(out / "tb"))
    events.Reload()
    for key in (ENTROPY, SOURCE_MIOU, "sel/snd_main"):  # TensorBoard holds what log.jsonl holds
        assert [(e.step, e.value) for e in events.Scalars(key)] == [
            (r["step"], pytest.approx(r[key], rel=1e-6)) for r in records]
    # the report picks without the truth: every pick, no regret
    report = select_runs([out])
    rows = report["runs"][0]["criteria"]
    assert rows["entropy"]["step"] in (2, 4) and "oracle" not in rows
    assert all(r["regret"] != r["regret"] for r in rows.values())  # NaN


def test_training_never_draws_the_source_hold_out(synthetic_root, tmp_path, monkeypatch):
    import utils.data
    from dataset import build_dataset
    from dataset.holdout import split_holdout

    drawn = []
    real_stream = utils.data.stream

    def stream(dataset, *args, **kwargs):
        for batch in real_stream(dataset, *args, **kwargs):
            drawn.extend(batch["name"])
            yield batch

    monkeypatch.setattr(utils.data, "stream", stream)
    out = tmp_path / "run"
    args = [*tiny_train_args(synthetic_root, out, steps=8), "--lambda-adv-aux", "0", "--lambda-adv-main", "0",
            "--source-holdout", "3", "--eval-every", "8", "--signal-images", "0", "--val-split", "none"]
    assert student_script.main(args) == 0
    source = build_dataset("gta5", synthetic_root / "gta5", "train", size=(64, 32))
    train, held = split_holdout(source.files, 3, stem=source.layout.stem)
    assert len(held) == 3 and len(drawn) == 8 * 2  # 8 steps of 2 source images: more than an epoch of 5
    assert set(drawn) == set(train) and not set(drawn) & set(held)
    assert [r[SOURCE_MIOU] for r in read_log(out / "log.jsonl") if SOURCE_MIOU in r]  # the hold-out was scored


def _script(monkeypatch, entropies=(), mious=()):
    """The validations' entropy and val mIoU, in order (the other signals as computed)."""
    import utils.validation

    entropies, mious, real = iter(entropies), iter(mious), utils.validation.compute_signals

    def signals(*args, **kwargs):
        return real(*args, **kwargs) | {ENTROPY: next(entropies)}

    def evaluate(*args, **kwargs):
        return {"mIoU": next(mious), "pixel_acc": 0.5}

    monkeypatch.setattr(utils.validation, "compute_signals", signals)
    monkeypatch.setattr(utils.validation, "evaluate", evaluate)
    return entropies, mious


def test_select_keeps_the_pick_and_resumes_keep_every_best(synthetic_root, tmp_path, monkeypatch):
    """Scripted entropies and val mIoUs, both best at step 4 of 2, 4, 6, 8; a resume after step 4 keeps them."""
    entropies, mious = _script(monkeypatch, [0.5, 0.2, 0.3, 0.4], [0.3, 0.5, 0.4, 0.45])
    out = tmp_path / "run"
    args = [*tiny_train_args(synthetic_root, out, steps=8), "--eval-every", "2", "--select", "entropy",
            "--keep-best", "--keep-last", "4", "--signal-images", "2", "--eval-limit", "2"]
    assert student_script.main([*args, "--num-steps-stop", "4"]) == 0
    at_4 = _net(out / "step_0000004.pth")
    assert _same(_net(out / "selected_entropy.pth"), at_4)
    before = torch.load(out / "last.pth", weights_only=True)["selection"]["bests"]
    assert before["entropy"] == {"value": 0.2, "step": 4}
    assert set(before) == set(CRITERIA) - {"agree_teacher", "source_mIoU"}
    assert before["oracle"] == {"value": 0.5, "step": 4}
    assert torch.load(out / "last.pth", weights_only=True)["best_val_mIoU"] == 0.5
    assert _same(_net(out / "selected_oracle.pth"), at_4)

    # resumed: steps 6 and 8 beat neither step 4's entropy nor its val mIoU
    assert student_script.main(["--resume", str(out / "last.pth"), *HOST]) == 0
    assert _same(_net(out / "selected_entropy.pth"), at_4) and _same(_net(out / "selected_oracle.pth"), at_4)
    after = torch.load(out / "last.pth", weights_only=True)
    assert after["selection"]["bests"]["entropy"] == {"value": 0.2, "step": 4}
    assert after["selection"]["bests"]["oracle"] == {"value": 0.5, "step": 4} and after["best_val_mIoU"] == 0.5
    assert next(entropies, None) is None and next(mious, None) is None
    # what utils.select picks from the log is what the run kept
    picks = select_runs([out])["runs"][0]["criteria"]
    assert picks["entropy"]["step"] == 4 and picks["oracle"]["step"] == 4


def test_a_resume_with_another_select_or_an_older_best_pth(synthetic_root, tmp_path, monkeypatch):
    """A criterion newly kept on resume starts over (its file appears at the next validation); an older run's
    best.pth becomes selected_oracle.pth, and its best_val_mIoU is the oracle's best."""
    _script(monkeypatch, [0.5, 0.4], [0.5, 0.2])
    out = tmp_path / "run"
    args = [*tiny_train_args(synthetic_root, out, steps=4), "--eval-every", "2", "--keep-best",
            "--signal-images", "2"]
    assert student_script.main([*args, "--num-steps-stop", "2"]) == 0
    last = out / "last.pth"
    state = torch.load(last, weights_only=True)
    del state["selection"]  # as an older run wrote it
    torch.save(state, last)
    (out / "selected_oracle.pth").rename(out / "best.pth")
    kept = _net(out / "best.pth")
    assert student_script.main(["--resume", str(last), *HOST, "--select", "diversity"]) == 0
    assert not (out / "best.pth").exists() and (out / "selected_diversity.pth").is_file()
    bests = torch.load(last, weights_only=True)["selection"]["bests"]
    assert bests["diversity"]["step"] == 4  # started over at the resume
    assert bests["oracle"] == {"value": 0.5, "step": 2}  # from best_val_mIoU; step 4's 0.2 did not beat it
    assert _same(_net(out / "selected_oracle.pth"), kept)


def _cfg(**changes) -> TrainConfig:
    return dataclasses.replace(TrainConfig(eval_every=10), **changes)


@pytest.mark.parametrize("changes, message", [
    ({"select": "entropy", "eval_every": 0}, "--select entropy: the criteria are scored at each validation"),
    ({"keep_best": True, "eval_every": 0}, "--keep-best: the criteria are scored at each validation"),
    ({"select": "source_mIoU"}, r"--select source_mIoU: needs a source hold-out \(--source-holdout N\)"),
    ({"select": "oracle", "val_split": None}, r"--select oracle: needs the target's val labels"),
    ({"keep_best": True, "val_split": None}, r"--keep-best: needs the target's val labels"),
    ({"select": "snd_main", "signal_images": 0}, r"needs target images for the signals \(--signal-images N\)"),
    ({"select": "agree_teacher"}, r"--select agree_teacher: needs a teacher"),
    ({"val_split": None, "signal_images": 0}, "--eval-every 10: nothing to score"),
])
def test_what_a_criterion_needs_is_checked_before_the_run(changes, message):
    with pytest.raises(ConfigError, match=message):
        check_selection(_cfg(**changes))


def test_every_label_free_criterion_is_accepted_with_what_it_needs():
    for name in LABEL_FREE:
        check_selection(_cfg(select=name, source_holdout=5, teacher="t.pth"))
    check_selection(_cfg(select="oracle", keep_best=True))
    check_selection(_cfg(select="entropy", eval_every=0, resume="last.pth"))  # a resumed stretch without validation
