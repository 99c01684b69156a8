"""Reading image and label files into uint8 tensors (torchvision decoders), with clear errors."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_image, read_file

from utils.errors import DatasetError

# torchvision 0.29 announces that TorchCodec will replace its decoders; until then they are the
# ecosystem's PNG/JPEG decoders to uint8 tensors, and the notice would repeat on every file.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # what torchvision.io.decode_image reads

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PALETTE, _GREY = 3, 0  # PNG colour types


def _read(path: Path, what: str) -> torch.Tensor:
    try:
        return read_file(str(path))
    except (RuntimeError, ValueError, OSError) as err:
        raise DatasetError(f"cannot read {what} {path}: {_first_line(err)}") from err


def _decode(path: Path, data: torch.Tensor, mode: ImageReadMode, what: str) -> torch.Tensor:
    try:
        return decode_image(data, mode=mode)
    except (RuntimeError, ValueError, OSError) as err:
        raise _unsupported(what, path, err) from err


def _unsupported(what: str, path: Path, err: BaseException) -> DatasetError:
    return DatasetError(f"cannot read {what} {path}: corrupt or unsupported file ({_first_line(err)})")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[-1] if text else type(err).__name__


def _png_depth(data: torch.Tensor) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's header, or None for another format."""
    head = bytes(data[:26].tolist())
    if len(head) < 26 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def read_image(path: str | Path) -> torch.Tensor:
    """Decode a PNG or JPEG file as a uint8 (3, H, W) RGB tensor; `DatasetError` names a bad file.

    16-bit PNGs are rounded to 8 bits, so that every image has the same value range.
    """
    path = Path(path)
    image = _decode(path, _read(path, "image"), ImageReadMode.RGB, "image")
    if image.dtype != torch.uint8:  # torchvision keeps 16-bit PNG samples as uint16
        image = (image.to(torch.float32) / 257).round_().to(torch.uint8)
    return image


def read_label(path: str | Path) -> torch.Tensor:
    """Decode a single-channel (grey or palette-index) label PNG as a uint8 (H, W) tensor of ids.

    Ids are the stored samples, also in PNGs of 1, 2 or 4 bits per pixel (which optimisers such as
    optipng write): palette indices are unpacked as they are, grey samples are not scaled to 0..255.
    """
    path = Path(path)
    data = _read(path, "label")
    header = _png_depth(data)
    if header is not None and header[0] < 8 and header[1] == _PALETTE:
        return _palette_indices(path)  # torchvision's decoder does not unpack these
    label = _decode(path, data, ImageReadMode.UNCHANGED, "label")
    if label.shape[0] != 1 or label.dtype != torch.uint8:
        raise DatasetError(f"label {path} must be an 8-bit single-channel PNG of ids, "
                           f"got {label.shape[0]} channel(s) of {label.dtype}")
    if header is not None and header[0] < 8 and header[1] == _GREY:
        label = label // (255 // (2 ** header[0] - 1))  # decoders scale a b-bit sample s to s * 255 / (2^b - 1)
    return label[0]


def read_synthia_label(path: str | Path) -> torch.Tensor:
    """SYNTHIA's class ids as a uint8 (H, W) tensor: the first channel of a 16-bit GT/LABELS PNG.

    SYNTHIA stores the class id in the first channel and an instance id in the second, as 16-bit samples
    (Pillow would read 8 bits and lose them; torchvision's libpng decoder keeps uint16). An 8-bit
    single-channel PNG of the same ids (as some converted copies hold) is read as it is.
    """
    path = Path(path)
    data = _read(path, "label")
    label = _decode(path, data, ImageReadMode.UNCHANGED, "label")
    if label.dtype == torch.uint8 and label.shape[0] == 1:
        return label[0]
    if label.dtype != torch.uint16:
        raise DatasetError(f"label {path} must be a SYNTHIA GT/LABELS PNG (16-bit, class id in the first channel), "
                           f"got {label.shape[0]} channel(s) of {label.dtype} (a GT/COLOR file?)")
    ids = label[0].to(torch.int32)  # uint16 has few kernels; ids fit int32
    top = int(ids.max()) if ids.numel() else 0
    if top > 255:
        raise DatasetError(f"label {path} holds class id {top} in its first channel; SYNTHIA's ids are 0..22 "
                           "(another kind of 16-bit PNG?)")
    return ids.to(torch.uint8)


LABEL_READERS = {"ids": read_label, "synthia": read_synthia_label}
"""How a layout's label files are read (`dataset.layouts.Layout.label_reader`)."""


def _palette_indices(path: Path) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return torch.from_numpy(np.array(image, dtype=np.uint8))
    except (OSError, ValueError) as err:
        raise _unsupported("label", path, err) from err


def list_images(folder: str | Path) -> list[Path]:
    """Every image (`IMAGE_SUFFIXES`) below `folder` (recursive), sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
