"""Decoding a SYNTHIA label: milliseconds per 1280x760 16-bit PNG for each reader, and whether it gets the ids.

    python -m bench.synthia_decode [--repeat 40] [--label PATH]

Without --label, one 1280x760 frame of the synthetic SYNTHIA is written like the real ones (16-bit RGB, class id
in the first channel, instance ids in the second; `dataset.synthetic.png16_bytes`). Readers timed: torchvision's
libpng decoder (what the loader uses), and where installed OpenCV, pypng and imageio (their default plugin), and
Pillow. Each is checked against the ids torchvision reads; a reader that returns other values is marked WRONG.
One thread, best of three rounds, in one process, so the figures are comparable with each other.
"""
from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from dataset.decode import read_synthia_label
from dataset.synthetic import make_frame, png16_bytes, synthia_label
from utils.cli import ArgumentParser, positive_int, run_cli

SIZE = (1280, 760)


def _readers() -> dict[str, Callable[[str], np.ndarray]]:
    """name -> function returning the class-id plane of a label file, for the readers installed here."""
    readers: dict[str, Callable[[str], np.ndarray]] = {"torchvision (used)": lambda p: read_synthia_label(p).numpy()}
    if importlib.util.find_spec("cv2"):
        import cv2

        cv2.setNumThreads(1)
        readers["opencv IMREAD_UNCHANGED"] = lambda p: cv2.imread(p, cv2.IMREAD_UNCHANGED)[..., 2]  # BGR order
    if importlib.util.find_spec("png"):
        import png

        def pypng(path: str) -> np.ndarray:
            width, height, rows, _ = png.Reader(filename=path).asDirect()
            return np.vstack([np.asarray(r, np.uint16) for r in rows]).reshape(height, width, -1)[..., 0]
        readers["pypng"] = pypng
    if importlib.util.find_spec("imageio"):
        import imageio.v3 as iio

        readers["imageio (default plugin)"] = lambda p: np.asarray(iio.imread(p))[..., 0]
    from PIL import Image

    readers["Pillow"] = lambda p: np.asarray(Image.open(p).convert("RGB"))[..., 0]
    return readers


def time_reader(read: Callable[[str], np.ndarray], path: str, repeat: int) -> float:
    """Best of three rounds of `repeat` reads, milliseconds per read."""
    read(path)
    rounds = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeat):
            read(path)
        rounds.append((time.perf_counter() - start) / repeat * 1000)
    return min(rounds)


def main(argv: Sequence[str] | None = None) -> int:
    """Print one line per reader: milliseconds per label and whether the ids are right."""
    parser = ArgumentParser(prog="python -m bench.synthia_decode", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=positive_int, default=40, help="reads per round (default %(default)s)")
    parser.add_argument("--label", default=None, help="a real SYNTHIA GT/LABELS file (default: a synthetic one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.label
        if path is None:
            _, train_ids = make_frame("synthia", SIZE, 0, "train", 0)
            path = str(Path(tmp) / "0000000.png")
            Path(path).write_bytes(png16_bytes(synthia_label(train_ids)))
        truth = read_synthia_label(path).numpy()
        print(f"{path}: {truth.shape[1]}x{truth.shape[0]}, {Path(path).stat().st_size} bytes, "
              f"torch {torch.__version__}, 1 thread")
        for name, read in _readers().items():
            try:
                ids = read(path)
                right = ids.shape == truth.shape and bool((ids.astype(np.int64) == truth).all())
                ms = time_reader(read, path, args.repeat)
                print(f"{name:26s} {ms:8.1f} ms/label  {'ids right' if right else 'WRONG ids'}")
            except Exception as err:  # a reader that cannot read the file at all says why
                print(f"{name:26s}      n/a        {type(err).__name__}: {str(err).splitlines()[0][:80]}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
