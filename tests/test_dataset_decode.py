"""Decoding label and image files of every bit depth PNG allows into the uint8 tensors the loaders expect."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dataset.decode import read_image, read_label

IDS = np.array([[7, 8, 11, 0, 5], [13, 1, 2, 15, 9], [3, 3, 4, 6, 10]])


def write_png(path: Path, samples: np.ndarray, bit_depth: int, colour_type: int, palette: bytes = b"") -> Path:
    """A PNG written by hand, byte by byte, so that any bit depth and colour type can be made."""
    h, w = samples.shape[:2]
    channels = {0: 1, 2: 3, 3: 1}[colour_type]
    flat = samples.reshape(h, w * channels)
    if bit_depth == 16:
        rows = [b"\0" + r.astype(">u2").tobytes() for r in flat]
    else:
        rows = []
        for r in flat:  # pack the samples of a row, most significant bits first, row padded to a byte
            bits = "".join(format(int(v), f"0{bit_depth}b") for v in r)
            bits += "0" * (-len(bits) % 8)
            rows.append(b"\0" + int(bits, 2).to_bytes(len(bits) // 8, "big"))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0)
    body = chunk(b"IHDR", header) + (chunk(b"PLTE", palette) if palette else b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("bit_depth", [1, 2, 4, 8])
@pytest.mark.parametrize("colour_type", [0, 3], ids=["grey", "palette"])
def test_label_ids_are_the_stored_samples_at_every_bit_depth(bit_depth, colour_type, tmp_path):
    ids = IDS % (2 ** bit_depth)
    palette = bytes(i % 256 for i in range(3 * 2 ** bit_depth)) if colour_type == 3 else b""
    path = write_png(tmp_path / "label.png", ids, bit_depth, colour_type, palette)
    assert Image.open(path).size == (5, 3)  # a valid PNG for another decoder too
    label = read_label(path)
    assert label.dtype == torch.uint8
    assert label.tolist() == ids.tolist()


def test_16_bit_images_are_rounded_to_8_bits(tmp_path):
    rgb16 = np.array([[[0, 65535, 257], [32896, 1000, 65280]]])
    image = read_image(write_png(tmp_path / "image.png", rgb16, 16, 2))
    assert image.dtype == torch.uint8
    assert image.permute(1, 2, 0).tolist() == [[[0, 255, 1], [128, 4, 254]]]
