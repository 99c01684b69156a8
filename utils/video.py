"""Reading and writing video frame by frame with PyAV (`av`, an optional dependency).

Frames are decoded and encoded one at a time, so memory does not grow with the video's length.
The writer uses H.264 (libx264, bundled with PyAV's FFmpeg) in yuv420p, which every player reads;
yuv420p halves the chroma resolution and so needs an even width and height, so a frame with an odd
side is written in yuv444p instead (same size, fewer players).
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from utils.errors import ConfigError, DatasetError

CODEC = "libx264"
INSTALL_HINT = "pip install av"


def require_av():
    """The `av` module, or a `ConfigError` saying how to install it."""
    try:
        return importlib.import_module("av")
    except ImportError as err:
        raise ConfigError(f"reading and writing video needs PyAV, which is not installed; `{INSTALL_HINT}` "
                          f"(or extract the frames, e.g. `ffmpeg -i drive.mp4 frames/%06d.png`, and pass the "
                          f"folder)") from err


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds: frame count (None when the container does not say), rate and size."""

    frames: int | None
    rate: Fraction
    width: int
    height: int


class VideoReader:
    """RGB uint8 (H, W, 3) frames of a file's first video stream, decoded one at a time.

    Opening fails with a `DatasetError` naming the file when it is not a video PyAV can decode.
    """

    def __init__(self, path: str | Path, flag: str = "--input") -> None:
        av = require_av()
        self.path = Path(path)
        try:
            self._container = av.open(str(self.path))
        except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
            raise DatasetError(f"{flag} {path}: not a video PyAV can read ({err})") from err
        if not self._container.streams.video:
            self._container.close()
            raise DatasetError(f"{flag} {path}: has no video stream")
        self._stream = self._container.streams.video[0]
        ctx = self._stream.codec_context
        rate = self._stream.average_rate or self._stream.guessed_rate or Fraction(25)
        self.info = VideoInfo(self._stream.frames or None, Fraction(rate), ctx.width, ctx.height)
        self._flag = flag

    def __iter__(self) -> Iterator[np.ndarray]:
        av = require_av()
        try:
            for frame in self._container.decode(self._stream):
                yield frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as err:
            raise DatasetError(f"{self._flag} {self.path}: cannot decode the video ({err})") from err

    def close(self) -> None:
        """Release the file."""
        self._container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoWriter:
    """Encodes RGB uint8 (H, W, 3) frames of one size into an H.264 .mp4 at a given frame rate.

    The frames go to a hidden partial file that replaces `path` only when the writer closes without
    an error: an interrupted run leaves an earlier output as it was.
    """

    def __init__(self, path: str | Path, rate: Fraction, width: int, height: int) -> None:
        av = require_av()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.size = (width, height)
        self._partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        self._container = av.open(str(self._partial), "w", format="mp4")
        self._stream = self._container.add_stream(CODEC, rate=Fraction(rate).limit_denominator(1001 * 1000))
        self._stream.width, self._stream.height = width, height
        # yuv420p subsamples the colour 2x2: libx264 refuses odd sides in it
        self._stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        """Encode one frame."""
        av = require_av()
        if rgb.shape != (self.size[1], self.size[0], 3):
            raise ValueError(f"frame of shape {rgb.shape}, the video is {self.size[0]}x{self.size[1]}")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb, dtype=np.uint8), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self, keep: bool = True) -> None:
        """Flush the encoder and finish the file (`keep=False`: drop it, leaving `path` untouched)."""
        try:
            if keep:
                for packet in self._stream.encode():
                    self._container.mux(packet)
            self._container.close()
            if keep:
                os.replace(self._partial, self.path)
        finally:
            self._partial.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(keep=exc_type is None)
