"""Reading image and label files into uint8 tensors (torchvision decoders), with clear errors."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torchvision.io import ImageReadMode, decode_image, read_file

from utils.errors import DatasetError

# torchvision 0.29 announces that TorchCodec will replace its decoders; until then they are the
# ecosystem's PNG/JPEG decoders to uint8 tensors, and the notice would repeat on every file.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


def _decode(path: Path, mode: ImageReadMode, what: str) -> torch.Tensor:
    try:
        data = read_file(str(path))
        return decode_image(data, mode=mode)
    except (RuntimeError, ValueError, OSError) as err:
        first_line = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise DatasetError(f"cannot read {what} {path}: corrupt or unsupported file ({first_line})") from err


def read_image(path: str | Path) -> torch.Tensor:
    """Decode a PNG or JPEG file as a uint8 (3, H, W) RGB tensor; `DatasetError` names a bad file."""
    return _decode(Path(path), ImageReadMode.RGB, "image")


def read_label(path: str | Path) -> torch.Tensor:
    """Decode a single-channel (grey or palette-index) label PNG as a uint8 (H, W) tensor."""
    path = Path(path)
    label = _decode(path, ImageReadMode.UNCHANGED, "label")
    if label.shape[0] != 1 or label.dtype != torch.uint8:
        raise DatasetError(f"label {path} must be an 8-bit single-channel PNG of ids, "
                           f"got {label.shape[0]} channel(s) of {label.dtype}")
    return label[0]
