"""Joint image/label transforms on uint8 tensors (torchvision v2), the one normalisation, presets.

Images arrive as uint8 (3, H, W) RGB tensors and labels as uint8 (H, W) tensors, of label ids or train
ids alike: a label is only resized (nearest), cropped, mirrored and padded with 255, and comes back in
its own dtype. Images are resized bicubic with antialiasing and normalised exactly once, by `NORMALIZE`
(RGB in [0, 1], then ImageNet mean/std, as the DRN ImageNet weights expect).
"""
from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from dataset.labels import IGNORE_LABEL
from utils.errors import ConfigError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: The single normalisation object, shared by the train and eval presets (and by anything else).
NORMALIZE = v2.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))

#: Scale-jitter range of `random_scale`: the image is resized to `size` times s, s ~ U[0.75, 1.5],
#: then cropped (or padded) back to `size`. Driving scenes keep their layout (road below, sky
#: above) under this range, while object sizes vary as with a different distance or focal length.
SCALE_RANGE: tuple[float, float] = (0.75, 1.5)
LABEL_SIZES = ("input", "full")


def to_normalized(image: torch.Tensor) -> torch.Tensor:
    """uint8 (3, H, W) RGB -> float32 (3, H, W): scaled to [0, 1], then `NORMALIZE`d."""
    return NORMALIZE(F.to_dtype(image, torch.float32, scale=True))


def denormalize(image: torch.Tensor) -> np.ndarray:
    """Undo `to_normalized` for display: float (3, H, W) tensor -> uint8 (H, W, 3) array."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    rgb = (image.detach() * std + mean).clamp(0, 1) * 255.0
    return rgb.round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def resize_pair(image: torch.Tensor, label: torch.Tensor | None, hw: tuple[int, int]):
    """Resize image (bicubic, antialiased) and label (nearest, pixel-centre exact) to (H, W)."""
    out_h, out_w = hw
    image = F.resize(image, [out_h, out_w], interpolation=v2.InterpolationMode.BICUBIC, antialias=True)
    return image, None if label is None else resize_label(label, hw)


def resize_label(label: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Resize an (H, W) label map to `hw` (nearest, pixel-centre exact), keeping dtype and values."""
    # NEAREST_EXACT samples at pixel centres like the bicubic image resize; plain NEAREST (floor of
    # the scaled index) shifts labels by up to a pixel against the image
    return F.resize(label[None], list(hw), interpolation=v2.InterpolationMode.NEAREST_EXACT)[0]


class EvalTransform:
    """Evaluation preset: resize to `size` (w, h), normalise; label at `size` or kept at full size."""

    def __init__(self, size: tuple[int, int], label_size: str = "input") -> None:
        if label_size not in LABEL_SIZES:
            raise ConfigError(f"label_size must be one of {LABEL_SIZES}, got {label_size!r}")
        self.size = (int(size[0]), int(size[1]))
        self.label_size = label_size
        self.normalize = NORMALIZE

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None,
                 generator: torch.Generator | None = None):
        """Return (float32 normalised image, label or None); the label keeps its dtype and values."""
        w, h = self.size
        keep_full = self.label_size == "full"
        image, small = resize_pair(image, None if keep_full else label, (h, w))
        if not keep_full:
            label = small
        return to_normalized(image), label


class TrainTransform(EvalTransform):
    """Training preset: resize to `size`, optional scale jitter + crop and mirror, normalise.

    With `random_scale` the image is resized once, straight from the file, to `size` * s with
    s ~ U`SCALE_RANGE`, then a random `size` window is cut; when the scaled image is smaller it is
    padded with 0 after normalisation (the mean colour) and the label with 255 (ignored).
    """

    def __init__(self, size: tuple[int, int], *, random_mirror: bool = False, random_scale: bool = False,
                 label_size: str = "input", scale_range: tuple[float, float] = SCALE_RANGE) -> None:
        super().__init__(size, label_size)
        if random_scale and label_size == "full":
            raise ConfigError("random_scale cannot be combined with label_size='full' "
                              "(a full-size label is for evaluation)")
        self.random_mirror = random_mirror
        self.random_scale = random_scale
        self.scale_range = scale_range

    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None,
                 generator: torch.Generator | None = None):
        """Return (float32 normalised image, label or None; the label keeps its dtype and values);
        randomness from `generator`."""
        if not self.random_scale:
            image, label = super().__call__(image, label)
        else:
            image, label = self._scale_and_crop(image, label, generator)
        if self.random_mirror and torch.rand((), generator=generator).item() < 0.5:
            image = F.horizontal_flip(image)
            if label is not None:
                label = F.horizontal_flip(label)
        return image, label

    def _scale_and_crop(self, image, label, generator):
        w, h = self.size
        lo, hi = self.scale_range
        s = lo + (hi - lo) * torch.rand((), generator=generator).item()
        sh, sw = max(1, round(h * s)), max(1, round(w * s))
        image, label = resize_pair(image, label, (sh, sw))
        image = to_normalized(image)
        pad_h, pad_w = max(0, h - sh), max(0, w - sw)
        if pad_h or pad_w:
            # pad right/bottom: mean colour (0 after normalisation) and the ignore label
            image = F.pad(image, [0, 0, pad_w, pad_h], fill=0.0)
            if label is not None:
                label = F.pad(label[None], [0, 0, pad_w, pad_h], fill=IGNORE_LABEL)[0]
        top = int(torch.randint(0, image.shape[-2] - h + 1, (), generator=generator))
        left = int(torch.randint(0, image.shape[-1] - w + 1, (), generator=generator))
        image = image[:, top:top + h, left:left + w]
        if label is not None:
            label = label[top:top + h, left:left + w]
        return image.contiguous(), None if label is None else label.contiguous()


def train_preset(size: tuple[int, int], *, random_mirror: bool = False, random_scale: bool = False,
                 label_size: str = "input") -> TrainTransform:
    """The training transform (resize, optional scale jitter + crop, optional mirror, `NORMALIZE`)."""
    return TrainTransform(size, random_mirror=random_mirror, random_scale=random_scale, label_size=label_size)


def eval_preset(size: tuple[int, int], *, label_size: str = "input") -> EvalTransform:
    """The evaluation transform (resize, `NORMALIZE`; label at `size` or at full resolution)."""
    return EvalTransform(size, label_size)


__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "NORMALIZE", "SCALE_RANGE", "EvalTransform", "TrainTransform",
    "denormalize", "eval_preset", "resize_label", "resize_pair", "to_normalized", "train_preset",
]
