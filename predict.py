"""Segment one image, a folder of images, or a video's frames with a checkpoint: colour masks and overlays.

    python predict.py --restore-from runs/NAME/final.pth --input street.png --out out/
    python predict.py --restore-from final.pth --input frames/ --out out/ --device cuda
    python predict.py --restore-from final.pth --input drive.mp4 --out out/ --every 5

Each image is resized to --input-size for the net, and its prediction is upsampled back to the
image's own size. Writes OUT/color/<name>.png and OUT/overlay/<name>.png (and OUT/labelIds/... with
--label-ids), mirroring a folder's sub-folders. A video is read with `torchvision.io.read_video`
when this torchvision has it (it needs PyAV; newer torchvision releases dropped it); otherwise
extract the frames first (`ffmpeg -i drive.mp4 frames/%06d.png`) and pass the folder.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from dataset.decode import read_image
from dataset.transforms import resize_pair, to_normalized
from model import fold_batchnorm
from utils.cli import ArgumentParser, check_output, positive_int, run_cli, size_arg
from utils.errors import ConfigError, DatasetError
from utils.evaluate import load_net, predict_labels
from utils.predictions import PredictionWriter, save_label_ids
from utils.runtime import AMP_DTYPES, autocast, resolve_device

INPUT_SIZE = "1024,512"
DEVICE = "auto"
AMP = "off"
CHANNELS_LAST = False
FOLD_BN = False
ALPHA = 0.5
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # what torchvision.io.decode_image reads
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


def get_parser() -> ArgumentParser:
    """Flags of predict.py, defaults from the constants above."""
    p = ArgumentParser(prog="predict.py", description=__doc__.splitlines()[0])
    p.add_argument("--restore-from", required=True, help="checkpoint (final.pth, last.pth, old state dict, URL)")
    p.add_argument("--input", required=True, help="an image, a folder of images (recursive) or a video file "
                                                "(with a torchvision that has read_video)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--input-size", type=size_arg, default=size_arg(INPUT_SIZE), help="W,H fed to the net")
    p.add_argument("--device", default=DEVICE, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", choices=sorted(AMP_DTYPES), default=AMP, help="autocast precision")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=CHANNELS_LAST,
                   help="channels_last memory format (faster on the CPU together with --amp bf16)")
    p.add_argument("--fold-bn", action=argparse.BooleanOptionalAction, default=FOLD_BN,
                   help="fold each batch norm into the convolution before it (faster, same masks up to float rounding)")
    p.add_argument("--flip", action="store_true", help="average with the mirrored image")
    p.add_argument("--alpha", type=float, default=ALPHA, help="overlay opacity of the colour mask (0..1)")
    p.add_argument("--label-ids", action="store_true", help="also write Cityscapes label-id PNGs")
    p.add_argument("--every", type=positive_int, default=1, help="video: keep every N-th frame")
    p.add_argument("--arch", default=None,
                   help="architecture of a checkpoint that does not name it (default: read from its keys)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="UNSAFE: allow unpickling a trusted legacy checkpoint (runs code from the file)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


def list_images(folder: Path) -> list[Path]:
    """Every image below `folder` (recursive), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_video_frames(path: Path, every: int = 1) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, uint8 (3, H, W) frame) for every `every`-th frame, via `torchvision.io.read_video`."""
    import torchvision.io

    reader = getattr(torchvision.io, "read_video", None)
    if reader is None:
        raise ConfigError(f"--input {path}: this torchvision cannot read videos (no torchvision.io.read_video); "
                          f"extract the frames first, e.g. `ffmpeg -i {path} frames/%06d.png`, and pass the folder")
    try:
        frames, _, _ = reader(str(path), pts_unit="sec", output_format="TCHW")
    except (RuntimeError, ImportError, OSError) as err:
        raise DatasetError(f"--input {path}: cannot read the video ({err}); extract the frames with ffmpeg") from err
    # decoded eagerly above so that an unreadable video fails before the net is loaded
    return ((f"{path.stem}/frame_{i:06d}", frames[i]) for i in range(0, frames.shape[0], every))


def collect_inputs(path: Path, every: int = 1) -> tuple[int | None, Iterator[tuple[str, torch.Tensor]]]:
    """The number of inputs (None when unknown) and an iterator of (relative name, uint8 image)."""
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise DatasetError(f"--input {path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return len(files), ((f.relative_to(path).as_posix(), read_image(f)) for f in files)
    if not path.is_file():
        raise DatasetError(f"--input {path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return 1, iter([(path.name, read_image(path))])
    if suffix in VIDEO_SUFFIXES:
        return None, read_video_frames(path, every)
    raise DatasetError(f"--input {path}: not an image ({', '.join(IMAGE_SUFFIXES)}) or a video "
                       f"({', '.join(VIDEO_SUFFIXES)})")


@torch.inference_mode()
def segment_image(net: torch.nn.Module, image: torch.Tensor, size: tuple[int, int], device: torch.device, *,
                  flip: bool = False, amp: str = "off", channels_last: bool = False) -> torch.Tensor:
    """Train ids (H, W) of a uint8 (3, H, W) image: fed at `size` (w, h), predicted at the image's size.

    `channels_last` feeds the image in that memory format (convert the net too).
    """
    w, h = size
    small, _ = resize_pair(image, None, (h, w))
    x = to_normalized(small)[None].to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device, amp):
        return predict_labels(net, x, tuple(image.shape[-2:]), flip=flip)[0]


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Segment every input and write its colour mask and overlay; returns the written entries."""
    args = get_parser().parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        raise ConfigError(f"--alpha expects a value in [0, 1], got {args.alpha}")
    check_output(args.out, "--out", folder=True)
    device = resolve_device(args.device)
    total, inputs = collect_inputs(Path(args.input), args.every)
    net = load_net(args.restore_from, arch=args.arch, allow_pickle=args.allow_pickle, device=device)
    if args.fold_bn:
        net = fold_batchnorm(net)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    writer = PredictionWriter(args.out, None, alpha=args.alpha)
    for name, image in tqdm(inputs, total=total, desc="predict", unit="img", disable=args.no_progress):
        pred = segment_image(net, image, args.input_size, device, flip=args.flip, amp=args.amp,
                             channels_last=args.channels_last).cpu()
        entry = writer.write(name, pred, image.permute(1, 2, 0).numpy())
        if args.label_ids:
            # arbitrary inputs have no CITY_SEQ_FRAME name: label ids go under the input's own name
            entry["label_ids"] = str(Path(args.out) / "labelIds" / f"{writer.display_stem(name)}.png")
            save_label_ids(pred, entry["label_ids"])
    writer.write_manifest()
    print(f"wrote {len(writer.entries)} predictions to {args.out} (color/, overlay/"
          f"{', labelIds/' if args.label_ids else ''})")
    return writer.entries


if __name__ == "__main__":
    sys.exit(run_cli(main))
