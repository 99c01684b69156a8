"""Static int8 quantisation of an exported graph with onnxruntime's tools, calibrated on a folder of images.

The weights are quantised per output channel (int8), the activations per tensor (uint8, the
x86 VNNI kernels' operand type) with ranges from the calibration images, and the result is a QDQ
graph (QuantizeLinear / DequantizeLinear pairs around each quantised operator), which
onnxruntime fuses into its integer kernels when it loads the file.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from dataset.decode import list_images, read_image
from dataset.transforms import resize_pair, to_normalized
from utils.cli import one_line
from utils.errors import ConfigError, DatasetError
from utils.onnx_net import require

CALIB_COUNT = 16


def preprocess(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """A (1, 3, H, W) float32 network input from an image file: resized to `size` (w, h) and
    normalised exactly as predict.py and the evaluation do."""
    w, h = size
    small, _ = resize_pair(read_image(path), None, (h, w))
    return to_normalized(small)[None].numpy()


def calibration_files(folder: str | Path, count: int, flag: str = "--calib-data") -> list[Path]:
    """The first `count` images below `folder` (sorted, recursive); `DatasetError` when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{flag} {folder}: not a folder (expected a folder of images)")
    files = list_images(folder)
    if not files:
        raise DatasetError(f"{flag} {folder}: no images (.png, .jpg, .jpeg, .webp) below this folder")
    # spread over the folder rather than the first few of one city or sequence
    step = max(1, len(files) // count)
    return files[::step][:count]


def readable_calibration_files(folder: str | Path, count: int, flag: str = "--calib-data") -> list[Path]:
    """`calibration_files`, each decoded once: an unreadable image stops the run before anything is written."""
    files = calibration_files(folder, count, flag)
    for path in files:
        read_image(path)  # DatasetError names the file
    return files


def calibration_reader(files: list[Path], size: tuple[int, int]):
    """An onnxruntime `CalibrationDataReader` feeding each file, preprocessed, as the graph's `image`."""
    quantization = require("onnxruntime.quantization")

    class ImageReader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self._files = iter(files)

        def get_next(self) -> dict | None:
            path = next(self._files, None)
            return None if path is None else {"image": preprocess(path, size)}

    return ImageReader()


def int8_path(fp32_path: str | Path) -> Path:
    """Where the int8 graph of `NAME.onnx` goes: `NAME.int8.onnx` beside it."""
    path = Path(fp32_path)
    return path.with_name(f"{path.stem}.int8{path.suffix or '.onnx'}")


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calib: str | Path | list[Path], size: tuple[int, int],
                  count: int = CALIB_COUNT, *, per_channel: bool = True, nodes_to_exclude: list[str] | None = None,
                  ) -> dict:
    """Write a statically quantised (QDQ, int8 weights, uint8 activations) copy of an fp32 graph.

    Calibrated (min/max) on up to `count` images of the folder `calib` (or on the image files `calib`
    lists) at `size` (w, h). `out_path` is replaced only when quantisation succeeded. Returns what was
    done (files, count, settings).
    """
    quantization = require("onnxruntime.quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    files = list(calib)[:count] if isinstance(calib, list) else calibration_files(calib, count)
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        partial = Path(tmp) / "int8.onnx"
        try:
            # folds constants and fuses what it can before the ranges are measured (onnxruntime's advice)
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
            quantization.quantize_static(
                str(prepared), str(partial), calibration_reader(files, size),
                quant_format=quantization.QuantFormat.QDQ, per_channel=per_channel,
                activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
                calibrate_method=quantization.CalibrationMethod.MinMax, nodes_to_exclude=nodes_to_exclude or [])
        except (ConfigError, DatasetError):
            raise
        except Exception as err:  # onnxruntime's tools raise many types (RuntimeError, ValueError, Fail, ...)
            raise ConfigError(f"int8 quantisation of {fp32_path} failed: {one_line(err)}") from err
        os.replace(partial, out_path)
    return {"int8": str(out_path), "calib_images": len(files), "calib_size": list(size), "format": "QDQ",
            "per_channel": per_channel, "weights": "int8", "activations": "uint8", "calibration": "minmax"}
