"""Exact resume: N steps in one run equal N/2 + --resume + N/2 bit for bit (CPU), augmentation included."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import train_gta2cs_multi_drnd22 as student_script
import train_gta2cs_ts_multi as distill_script
from dataset import build_dataset
from dataset.sampling import StreamSampler
from model import build_seg_model, save_final
from tests.conftest import tiny_train_args

# the smallest input the discriminators take (5 stride-2 convs), one image per batch: fast on 2 cores
AUGMENT = ["--input-size", "32,32", "--input-size-target", "32,32", "--batch-size", "1",
           "--random-mirror", "--random-scale", "--save-pred-every", "1000"]


def _weights(folder: Path) -> dict:
    return torch.load(folder / "last.pth", weights_only=True)


def _assert_identical(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for key in ("net", "d1", "d2"):
        diff = [k for k in a[key] if not torch.equal(a[key][k], b[key][k])]
        assert not diff, f"{key}: {len(diff)} tensors differ, e.g. {diff[:3]}"
    # optimizer state (momentum / Adam moments) too
    for key in ("optimizer", "optimizer_d1", "optimizer_d2"):
        sa, sb = a[key]["state"], b[key]["state"]
        assert sa.keys() == sb.keys()
        for i in sa:
            for name, value in sa[i].items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb[i][name])), (key, i, name)


def _one_and_split(script, make_args, tmp_path: Path, steps: int) -> tuple[dict, dict]:
    """Final state of `steps` steps in one run, and of steps/2, then --resume to `steps`."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert script.main(make_args(whole, steps)) == 0
    assert script.main([*make_args(split, steps), "--num-steps-stop", str(steps // 2)]) == 0
    assert _weights(split)["step"] == steps // 2
    assert script.main([*make_args(split, steps), "--resume", str(split / "last.pth")]) == 0
    return _weights(whole), _weights(split)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_adaptation_resume_is_bit_identical(synthetic_root, tmp_path, workers):
    def make_args(out, steps):
        return [*tiny_train_args(synthetic_root, out, steps=steps), *AUGMENT, "--num-workers", workers]

    _assert_identical(*_one_and_split(student_script, make_args, tmp_path, steps=2))


def test_distillation_resume_is_bit_identical(synthetic_root, tmp_path):
    teacher = tmp_path / "teacher.pth"
    torch.manual_seed(1)
    save_final(teacher, build_seg_model("drn_d_22"))  # a small teacher keeps the test fast

    def make_args(out, steps):
        return [*tiny_train_args(synthetic_root, out, steps=steps), *AUGMENT, "--teacher", str(teacher),
                "--paradigm", "both"]

    _assert_identical(*_one_and_split(distill_script, make_args, tmp_path, steps=2))


def test_augmentation_of_a_sample_depends_only_on_its_stream_position(synthetic_root):
    ds = build_dataset("gta5", synthetic_root / "gta5", "train", size=(64, 32), random_mirror=True,
                       random_scale=True)
    keys = [k for _, k in zip(range(12), StreamSampler(len(ds), seed=7, with_seeds=True))]
    first = [ds[k]["image"] for k in keys]
    torch.manual_seed(999)  # the global generator (and a worker's seed) must not matter
    again = [ds[k]["image"] for k in keys[::-1]][::-1]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    resumed = [k for _, k in zip(range(7), StreamSampler(len(ds), seed=7, start=5, with_seeds=True))]
    assert resumed == keys[5:]
    assert len({k[1] for k in keys}) == len(keys)  # a fresh seed per sample
