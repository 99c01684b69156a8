"""Joint transforms: image and label stay aligned under mirror and scale; padding; determinism."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dataset import build_dataset
from dataset.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALIZE,
    SCALE_RANGE,
    TrainTransform,
    denormalize,
    to_normalized,
)

CAR_LABEL_ID, ROAD_LABEL_ID = 26, 7


@pytest.fixture(scope="module")
def marker_root(tmp_path_factory):
    """A one-frame Cityscapes tree: black image, one white off-centre box labelled car, road elsewhere."""
    root = tmp_path_factory.mktemp("marker")
    image = np.zeros((40, 80, 3), np.uint8)
    label = np.full((40, 80), ROAD_LABEL_ID, np.uint8)
    image[8:20, 10:26] = 255
    label[8:20, 10:26] = CAR_LABEL_ID
    stem = "aachen_000000_000019"
    (root / "leftImg8bit/train/aachen").mkdir(parents=True)
    (root / "gtFine/train/aachen").mkdir(parents=True)
    Image.fromarray(image).save(root / f"leftImg8bit/train/aachen/{stem}_leftImg8bit.png")
    Image.fromarray(label).save(root / f"gtFine/train/aachen/{stem}_gtFine_labelIds.png")
    return root


def brightness(image: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(denormalize(image).astype(np.float32).mean(-1))


def test_marker_stays_aligned_under_mirror_and_scale(marker_root):
    ds = build_dataset("cityscapes", marker_root, "train", size=(64, 32), random_mirror=True, random_scale=True)
    flips = 0
    for seed in range(30):
        torch.manual_seed(seed)
        item = ds[0]
        label, bright = item["label"], brightness(item["image"])
        car, road = label == 13, label == 0
        if car.sum() < 4:
            continue  # the crop may cut the marker away
        ys, xs = torch.nonzero(car, as_tuple=True)
        bys, bxs = torch.nonzero(bright > 128, as_tuple=True)
        assert abs(xs.float().mean() - bxs.float().mean()) < 0.5 and abs(ys.float().mean() - bys.float().mean()) < 0.5
        assert bright[car].mean() > 200 and bright[road].mean() < 60
        flips += int(xs.float().mean() > 32)  # the marker starts in the left half
    assert flips > 0, "mirroring never happened"


def test_scale_down_pads_the_label_with_ignore_and_image_with_mean(marker_root):
    t = TrainTransform((64, 32), random_scale=True, scale_range=(0.5, 0.5))
    image = torch.zeros(3, 40, 80, dtype=torch.uint8)
    label = torch.zeros(40, 80, dtype=torch.uint8)
    out_image, out_label = t(image, label, generator=torch.Generator().manual_seed(0))
    assert out_image.shape == (3, 32, 64) and out_label.shape == (32, 64)
    assert out_label.dtype == torch.uint8  # labels keep their dtype: the dataset maps ids after this
    assert (out_label == 255).sum() == 32 * 64 - 16 * 32
    assert (out_image[:, out_label == 255] == 0).all()


def test_augmentation_is_reproducible_for_a_generator():
    t = TrainTransform((32, 16), random_mirror=True, random_scale=True)
    image = torch.randint(0, 256, (3, 20, 40), dtype=torch.uint8)
    label = torch.randint(0, 19, (20, 40), dtype=torch.uint8)
    a = t(image, label, generator=torch.Generator().manual_seed(7))
    b = t(image, label, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_scale_range_is_the_documented_one():
    assert SCALE_RANGE == (0.75, 1.5)


def test_normalisation_is_imagenet_rgb_and_denormalize_inverts_it():
    image = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8)
    norm = to_normalized(image)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expected = (image.float() / 255 - mean) / std
    assert torch.allclose(norm, expected, atol=1e-6)
    assert list(NORMALIZE.mean) == list(IMAGENET_MEAN)
    assert (denormalize(norm) == image.permute(1, 2, 0).numpy()).all()
