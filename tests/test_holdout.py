"""The source hold-out and the signals' target subset (dataset/holdout.py): fixed, disjoint, never drawn."""
from __future__ import annotations

import random

import pytest
import torch

from dataset import build_dataset
from dataset.holdout import choose_frames, holdout_datasets, split_holdout, target_signal_dataset
from dataset.sampling import StreamSampler
from utils.errors import ConfigError, DatasetError

FILES = [f"images/{i:05d}.png" for i in range(1, 201)]


def test_split_is_disjoint_complete_and_fixed():
    train, held = split_holdout(FILES, 20, seed=0)
    assert len(held) == 20 and len(train) == 180
    assert not set(train) & set(held)
    assert sorted(train + held) == sorted(FILES)
    assert train == [f for f in FILES if f not in held]  # list order kept
    assert split_holdout(FILES, 20, seed=0) == (train, held)  # the same in every call


def test_split_depends_on_names_not_on_order_or_spelling():
    _, held = split_holdout(FILES, 20, seed=0)
    shuffled = FILES[:]
    random.Random(1).shuffle(shuffled)
    assert set(split_holdout(shuffled, 20, seed=0)[1]) == set(held)
    # the original lists' spelling (relative to the image folder) holds out the same frames
    bare = [f.split("/")[-1] for f in FILES]
    assert {f.split("/")[-1] for f in held} == set(split_holdout(bare, 20, seed=0)[1])
    # another seed, another hold-out; a frame listed twice goes with its copy
    assert set(split_holdout(FILES, 20, seed=1)[1]) != set(held)
    train2, held2 = split_holdout(FILES + held[:1], 20, seed=0)
    assert held2.count(held[0]) == 2 and held[0] not in train2


def test_growing_the_hold_out_keeps_the_frames_already_held_out():
    assert set(split_holdout(FILES, 10)[1]) <= set(split_holdout(FILES, 30)[1])


def test_split_refuses_a_hold_out_that_leaves_nothing():
    assert split_holdout(FILES, 0) == (FILES, [])
    with pytest.raises(DatasetError, match="leaves none of the 200"):
        split_holdout(FILES, 200)
    with pytest.raises(ConfigError, match=">= 0"):
        choose_frames(FILES, -1, seed=0, purpose="x")


def test_training_never_draws_the_hold_out(synthetic_root):
    source = build_dataset("gta5", synthetic_root / "gta5", "train", size=(32, 16), random_mirror=True)
    before = list(source.files)
    train, held = holdout_datasets(source, 2, size=(32, 16))
    assert source.files == before  # the dataset handed in is left as it is
    assert len(held) == 2 and len(train) == len(before) - 2
    assert not set(train.files) & set(held.files)
    assert holdout_datasets(source, 2, size=(32, 16))[1].files == held.files  # fixed
    # every sample of several epochs of the training stream, on one rank and on two, is a training frame
    for world_size in (1, 2):
        for rank in range(world_size):
            stream = iter(StreamSampler(len(train), seed=5, rank=rank, world_size=world_size, with_seeds=True))
            drawn = {train.files[next(stream)[0]] for _ in range(5 * len(train))}
            assert not drawn & set(held.files)
    # the hold-out loads with its labels, at the input size, through the eval preset (no mirroring)
    item = held[0]
    assert item["image"].shape == (3, 16, 32) and item["label"].shape == (16, 32)
    assert torch.equal(held[0]["image"], item["image"])
    assert held.transform is not source.transform and train.transform is source.transform


def test_hold_out_needs_labels(synthetic_root):
    unlabelled = build_dataset("gta5", synthetic_root / "gta5", "train", size=(32, 16), labels=False)
    with pytest.raises(ConfigError, match="with labels"):
        holdout_datasets(unlabelled, 2, size=(32, 16))


def test_target_subset_is_fixed_unlabelled_and_never_val(synthetic_root):
    root = synthetic_root / "cityscapes"
    target = build_dataset("cityscapes", root, "train", size=(64, 32), labels=True)
    subset = target_signal_dataset(target, 3, size=(32, 16))
    assert len(subset) == 3 and set(subset.files) <= set(target.files)
    assert target_signal_dataset(target, 3, size=(32, 16)).files == subset.files
    assert not subset.labels and "label" not in subset[0] and subset[0]["image"].shape == (3, 16, 32)
    assert len(target_signal_dataset(target, 100, size=(32, 16))) == len(target)  # at most every image
    val = build_dataset("cityscapes", root, "val", size=(64, 32), labels=False)
    with pytest.raises(ConfigError, match="never its 'val'"):
        target_signal_dataset(val, 3, size=(32, 16))


def test_subset_refuses_unknown_frames_and_labels_it_never_had(synthetic_root):
    source = build_dataset("gta5", synthetic_root / "gta5", "train", size=(32, 16), labels=False)
    with pytest.raises(DatasetError, match="1 of the 1 frames asked for are not in this gta5 dataset"):
        source.subset(["images/99999.png"])
    with pytest.raises(ValueError, match="built without"):
        source.subset(source.files[:1], labels=True)
