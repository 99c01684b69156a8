"""Segment one image, a folder of images, or a video with a checkpoint or an ONNX graph: colour masks and overlays.

    python predict.py --restore-from runs/NAME/final.pth --input street.png --out out/
    python predict.py --restore-from final.pth --input frames/ --out out/ --device cuda
    python predict.py --restore-from final.pth --input drive.mp4 --out out/          # -> out/drive_overlay.mp4
    python predict.py --onnx student.int8.onnx --input drive.mp4 --out out/         # onnxruntime, CPU

Each image is resized to --input-size for the net, and its prediction is upsampled back to the
image's own size. Images: writes OUT/color/<name>.png and OUT/overlay/<name>.png (and
OUT/labelIds/... with --label-ids), mirroring a folder's sub-folders. A video is decoded and encoded
frame by frame with PyAV (`pip install av`): OUT/<name>_overlay.mp4 at the video's size and frame
rate (divided by --every), and with --label-ids OUT/labelIds/<name>/frame_NNNNNN.png per kept frame.
"""
from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from dataset.decode import IMAGE_SUFFIXES, list_images, read_image
from dataset.labels import PALETTE
from dataset.transforms import resize_pair, to_normalized
from model import fold_batchnorm
from utils.cli import (
    ArgumentParser,
    add_checkpoint_reader_flags,
    check_output,
    finite_float,
    positive_int,
    run_cli,
    size_arg,
    stop_on_signals,
)
from utils.cpu import announce, check_amp, torch_form
from utils.errors import ConfigError, DatasetError
from utils.evaluate import load_net, predict_labels
from utils.onnx_net import OnnxSegNet, graph_number_type
from utils.predictions import PredictionWriter, overlay, save_label_ids
from utils.runtime import add_inference_flags, autocast, resolve_device
from utils.video import VideoReader, VideoWriter

INPUT_SIZE = "1024,512"
DEVICE = "auto"
AMP = "off"
CHANNELS_LAST = False
FOLD_BN = False
ALPHA = 0.5
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


def get_parser() -> ArgumentParser:
    """Flags of predict.py, defaults from the constants above."""
    p = ArgumentParser(prog="predict.py", description=__doc__.splitlines()[0])
    net = p.add_mutually_exclusive_group(required=True)
    net.add_argument("--restore-from", help="checkpoint (final.pth, last.pth, old state dict, URL)")
    net.add_argument("--onnx", metavar="MODEL", help="an ONNX graph written by export_onnx.py (fp32 or int8), run "
                                                     "with onnxruntime on the CPU")
    p.add_argument("--input", required=True, help="an image, a folder of images (recursive) or a video file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--input-size", type=size_arg, default=size_arg(INPUT_SIZE), help="W,H fed to the net")
    add_inference_flags(p, device=DEVICE, amp=AMP, channels_last=CHANNELS_LAST, fold_bn=FOLD_BN)
    p.add_argument("--flip", action="store_true", help="average with the mirrored image")
    p.add_argument("--alpha", type=finite_float, default=ALPHA, help="overlay opacity of the colour mask (0..1)")
    p.add_argument("--label-ids", action="store_true", help="also write Cityscapes label-id PNGs")
    p.add_argument("--every", type=positive_int, default=1,
                   help="video: keep every N-th frame (the output's frame rate is divided by N)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's / onnxruntime's)")
    add_checkpoint_reader_flags(p)
    return p


def collect_inputs(path: Path) -> tuple[int, Iterator[tuple[str, torch.Tensor]]]:
    """The number of images and an iterator of (relative name, uint8 (3, H, W) image) for an image or a folder."""
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise DatasetError(f"--input {path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return len(files), ((f.relative_to(path).as_posix(), read_image(f)) for f in files)
    return 1, ((p.name, read_image(p)) for p in [path])


def input_kind(path: Path) -> str:
    """"images" (an image or a folder) or "video"; `DatasetError` for anything else."""
    if path.is_dir():
        return "images"
    if not path.is_file():
        raise DatasetError(f"--input {path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "images"
    if suffix in VIDEO_SUFFIXES:
        return "video"
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


def load_model(args, device: torch.device) -> torch.nn.Module:
    """The net --restore-from or --onnx names, with the requested fast paths."""
    if args.onnx:
        if args.device not in ("auto", "cpu") or args.amp != "off" or args.fold_bn or args.channels_last:
            raise ConfigError("--onnx runs on the CPU with onnxruntime: drop --device, --amp, --fold-bn and "
                              "--channels-last")
        graph = OnnxSegNet(args.onnx, args.threads, num_classes=len(PALETTE))  # a graph of scores per class
        announce(device, f"onnxruntime, {graph_number_type(args.onnx)} graph {args.onnx}")
        return graph
    check_amp(device, args.amp, args.allow_slow_bf16, deploys=True)
    announce(device, torch_form(args.amp, args.channels_last, args.fold_bn))
    net = load_net(args.restore_from, arch=args.arch, allow_pickle=args.allow_pickle, device=device)
    if args.fold_bn:
        net = fold_batchnorm(net)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def _segment(net: torch.nn.Module, image: torch.Tensor, args, device: torch.device) -> torch.Tensor:
    return segment_image(net, image, args.input_size, device, flip=args.flip, amp=args.amp,
                         channels_last=args.channels_last).cpu()


def predict_images(net: torch.nn.Module, path: Path, args, device: torch.device) -> list[dict]:
    """Colour mask and overlay PNGs (and label ids) of an image or a folder; returns the written entries."""
    total, inputs = collect_inputs(path)
    writer = PredictionWriter(args.out, None, alpha=args.alpha)
    for name, image in tqdm(inputs, total=total, desc="predict", unit="img", disable=args.no_progress):
        pred = _segment(net, image, args, device)
        entry = writer.write(name, pred, image.permute(1, 2, 0).numpy())
        if args.label_ids:
            # arbitrary inputs have no CITY_SEQ_FRAME name: label ids go under the input's own name
            entry["label_ids"] = str(Path(args.out) / "labelIds" / f"{writer.display_stem(name)}.png")
            save_label_ids(pred, entry["label_ids"])
    writer.write_manifest()
    print(f"wrote {len(writer.entries)} predictions to {args.out} (color/, overlay/"
          f"{', labelIds/' if args.label_ids else ''})")
    return writer.entries


def predict_video(net: torch.nn.Module, reader: VideoReader, args, device: torch.device) -> list[dict]:
    """OUT/<name>_overlay.mp4 (and label-id PNGs per kept frame), streamed frame by frame; returns one entry.

    Nothing is written before the first frame decodes: a video without a decodable frame is a
    `DatasetError` that leaves no file.
    """
    info, stem = reader.info, reader.path.stem
    out = Path(args.out)
    video_path = out / f"{stem}_overlay.mp4"
    total = None if info.frames is None else -(-info.frames // args.every)
    frames = iter(reader)
    first = next(frames, None)
    if first is None:
        raise DatasetError(f"--input {reader.path}: the video has no frame that can be decoded")
    kept = 0
    with VideoWriter(video_path, info.rate / args.every, info.width, info.height) as video, \
            tqdm(total=total, desc="predict", unit="frame", disable=args.no_progress) as bar:
        for index, rgb in enumerate(itertools.chain([first], frames)):
            if index % args.every:
                continue
            image = torch.from_numpy(rgb).permute(2, 0, 1)
            pred = _segment(net, image, args, device)
            video.write(overlay(rgb, pred, args.alpha))
            if args.label_ids:
                save_label_ids(pred, out / "labelIds" / stem / f"frame_{index:06d}.png")
            kept += 1
            bar.update(1)
    entry = {"name": reader.path.name, "video": str(video_path), "frames": kept, "every": args.every,
             "rate": str(info.rate / args.every), "size": [info.width, info.height]}
    if args.label_ids:
        entry["label_ids"] = str(out / "labelIds" / stem)
    writer = PredictionWriter(args.out, None, alpha=args.alpha)
    writer.entries.append(entry)
    writer.write_manifest()
    ids = f" and {kept} label-id PNGs in {entry['label_ids']}" if args.label_ids else ""
    print(f"wrote {video_path} ({kept} frames, {info.width}x{info.height} at "
          f"{float(info.rate / args.every):g} frames/s){ids}")
    return [entry]


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Segment every input and write its colour mask and overlay (or overlay video); returns the written entries.

    SIGINT and SIGTERM stop it (status 130 / 143 through `run_cli`) with the partial video removed.
    """
    with stop_on_signals():
        return _predict(argv)


def _predict(argv: Sequence[str] | None) -> list[dict]:
    args = get_parser().parse_args(argv)
    if not 0.0 <= args.alpha <= 1.0:
        raise ConfigError(f"--alpha expects a value in [0, 1], got {args.alpha}")
    check_output(args.out, "--out", folder=True)
    device = torch.device("cpu") if args.onnx else resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    path = Path(args.input)
    if input_kind(path) == "images":
        collect_inputs(path)  # an empty folder fails before the net is loaded
        return predict_images(load_model(args, device), path, args, device)
    with VideoReader(path) as reader:  # a file that is not a video fails before the net is loaded
        return predict_video(load_model(args, device), reader, args, device)


if __name__ == "__main__":
    sys.exit(run_cli(main))
