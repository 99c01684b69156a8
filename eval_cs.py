"""Evaluate a segmentation checkpoint on Cityscapes val (or BDD100K val): per-class IoU, mIoU, accuracy.

Default protocol (docs/method.md#evaluation): the image at the training size (1024x512), the main head's output
upsampled bilinearly to the label's full size, arg-max, one 19x19 confusion matrix over the split.
`--label-size input` is the original code's protocol (labels nearest-resized to the input size).
Classes (`--protocol`): all 19, or for a net trained on SYNTHIA the field's 16 and 13 classes (docs/evaluation.md);
by default read from the run's config.json beside the checkpoint.

    python eval_cs.py --restore-from runs/NAME/final.pth --data-dir data/cityscapes --json eval.json
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset

from dataset import build_dataset
from dataset.labels import CLASS_SETS, CLASSES, NUM_CLASSES
from model import fold_batchnorm
from utils.cli import (
    ArgumentParser,
    add_checkpoint_reader_flags,
    check_output,
    non_negative_int,
    positive_int,
    run_cli,
    size_arg,
)
from utils.cpu import announce, check_amp, torch_form
from utils.errors import ConfigError
from utils.evaluate import LABEL_SIZES, PROTOCOLS, eval_collate, evaluate, load_net, protocol_of_source, protocol_scores
from utils.files import write_text_atomic
from utils.predictions import PredictionWriter, check_prediction_folder, clear_predictions
from utils.runtime import add_inference_flags, resolve_device

DATASET = "cityscapes"
DATA_DIRECTORY = "./data/cityscapes"
DATA_LIST_PATH = None  # None: scan the split's image folder
SPLIT = "val"
INPUT_SIZE = "1024,512"
LABEL_SIZE = "full"
BATCH_SIZE = 1
NUM_WORKERS = 2
DEVICE = "auto"
AMP = "off"
CHANNELS_LAST = False
FOLD_BN = False
SCALES = "1.0"
PROTOCOL = "auto"  # classes scored: auto (from the run's training source), cityscapes19, synthia16, synthia13
EVAL_DATASETS = ("cityscapes", "bdd")


def scales_arg(text: str) -> tuple[float, ...]:
    """argparse `type=` for '--scales 0.75,1.0,1.25' (positive factors)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) <= 0 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive factors, e.g. 0.75,1.0,1.25, got {text!r}")
    return values


def get_parser() -> ArgumentParser:
    """Flags of eval_cs.py, defaults from the constants above."""
    p = ArgumentParser(prog="eval_cs.py", description=__doc__.splitlines()[0])
    p.add_argument("--restore-from", required=True, help="checkpoint (final.pth, last.pth, old state dict, URL)")
    p.add_argument("--data-dir", default=DATA_DIRECTORY, help="dataset root")
    p.add_argument("--data-list", default=DATA_LIST_PATH, help="list of relative image paths (default: scan)")
    p.add_argument("--dataset", choices=EVAL_DATASETS, default=DATASET,
                   help="dataset (bdd: today's bdd100k/ or the 2018 seg/ layout, recognised under --data-dir)")
    p.add_argument("--exclude", default=None, metavar="FILE",
                   help="leave out the frames named in FILE (one name, stem or image path per line)")
    p.add_argument("--split", default=SPLIT, help="split to evaluate")
    p.add_argument("--input-size", type=size_arg, default=size_arg(INPUT_SIZE), help="W,H fed to the net")
    p.add_argument("--label-size", choices=LABEL_SIZES, default=LABEL_SIZE,
                   help="full: score at the label's resolution (docs/method.md#evaluation); input: the original code's")
    p.add_argument("--protocol", choices=("auto", *PROTOCOLS), default=PROTOCOL,
                   help="classes the means are over: cityscapes19; synthia16 / synthia13 (a net trained on SYNTHIA: "
                        "both are reported, the named one first); auto: synthia16 when the checkpoint's run "
                        "(config.json beside it) trained on SYNTHIA, cityscapes19 otherwise")
    p.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE)
    p.add_argument("--num-workers", type=non_negative_int, default=NUM_WORKERS)
    add_inference_flags(p, device=DEVICE, amp=AMP, channels_last=CHANNELS_LAST, fold_bn=FOLD_BN)
    p.add_argument("--flip", action="store_true", help="test-time augmentation: average with the mirror image")
    p.add_argument("--scales", type=scales_arg, default=scales_arg(SCALES), help="test-time scales, e.g. 0.75,1,1.25")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N images")
    p.add_argument("--json", default=None, help="write every figure to this JSON file")
    p.add_argument("--csv", default=None, help="write one row per class to this CSV file")
    p.add_argument("--save-pred", default=None, metavar="DIR",
                   help="write label-id PNGs (official format), colour maps and overlays to DIR, a new or empty "
                        "folder")
    p.add_argument("--overwrite-pred", action="store_true",
                   help="--save-pred DIR may hold an earlier run's predictions: delete them first (once every "
                        "input is checked); other files in DIR are still refused")
    add_checkpoint_reader_flags(p)
    return p


def _finite(value: float) -> float | None:
    """JSON has no NaN: a score that does not exist becomes null."""
    return None if value is None or not math.isfinite(value) else float(value)


def resolve_protocol(protocol: str, restore_from: str) -> tuple[str, str]:
    """(protocol, why) for `--protocol`: as asked, or with "auto" from the training source that the run's
    config.json beside the checkpoint names (cityscapes19 when there is none)."""
    if protocol != "auto":
        return protocol, "--protocol"
    config = Path(restore_from).parent / "config.json" if "://" not in restore_from else None
    if config is None or not config.is_file():
        return "cityscapes19", "no config.json beside the checkpoint; --protocol synthia16 for a SYNTHIA-trained net"
    try:
        source = json.loads(config.read_text()).get("config", {}).get("source")
    except (OSError, ValueError, AttributeError):
        return "cityscapes19", f"{config} is unreadable"
    return protocol_of_source(source), f"the run trained on {source} ({config})"


def summarize(result: dict, args, dataset_size: int, protocol: str = "cityscapes19") -> dict:
    """The JSON-ready summary of an `evaluate` result and the run's settings, scored on `protocol`'s classes."""
    sets = protocol_scores(result["confusion"], protocol)
    main = result if protocol == "cityscapes19" else sets[protocol]  # the same figures for all 19 classes
    iou = main["iou"].tolist()
    acc = main["acc"].tolist()
    return {
        "mIoU": _finite(main["mIoU"]),
        "pixel_acc": _finite(main["pixel_acc"]),
        "mean_acc": _finite(main["mean_acc"]),
        "per_class": {name: _finite(v) for name, v in zip(CLASSES, iou)},
        "per_class_acc": {name: _finite(v) for name, v in zip(CLASSES, acc)},
        "classes_counted": int(sum(math.isfinite(v) for v in iou)),
        "class_sets": {name: {"classes": scores["classes"], "mIoU": _finite(scores["mIoU"]),
                              "mean_acc": _finite(scores["mean_acc"]), "pixel_acc": _finite(scores["pixel_acc"])}
                       for name, scores in sets.items()},
        "images_per_s": _finite(result["images_per_s"]),
        "seconds": round(result["seconds"], 3),
        "model_seconds": round(result["model_seconds"], 3),
        "num_images": result["num_images"],
        "dataset_size": dataset_size,
        "num_pixels": result["num_pixels"],
        "checkpoint": str(args.restore_from),
        "dataset": args.dataset,
        "data_dir": str(args.data_dir),
        "split": args.split,
        "protocol": {**result["protocol"], "input_size": list(args.input_size), "fold_bn": args.fold_bn,
                     "classes": protocol},
        "device": str(args.device),
        "confusion": result["confusion"].tolist(),
        "torch": torch.__version__,
    }


def _set_label(name: str) -> str:
    """'mIoU16' for synthia16; plain 'mIoU' for all 19 classes."""
    return "mIoU" if name == "cityscapes19" else f"mIoU{name[len('synthia'):]}"


def format_table(summary: dict) -> str:
    """Per-class IoU and accuracy table plus the totals, as printed on stdout."""
    def pct(v):
        return "   n/a" if v is None else f"{100 * v:6.2f}"

    protocol = summary.get("protocol", {}).get("classes", "cityscapes19")
    scored = set(CLASS_SETS[protocol])
    lines = [f"{'class':<15} {'IoU':>6} {'acc':>6}", "-" * 29]
    for train_id, name in enumerate(CLASSES):
        row = f"{name:<15} {pct(summary['per_class'][name])} {pct(summary['per_class_acc'][name])}"
        if train_id not in scored:
            row += f"   not in {protocol} (its ground truth ignored)"
        lines.append(row)
    lines.append("-" * 29)
    sets = summary.get("class_sets") or {}
    if protocol == "cityscapes19" or not sets:
        lines.append(f"{'mIoU':<15} {pct(summary['mIoU'])}   ({summary['classes_counted']} classes counted)")
    else:
        for name, scores in sets.items():
            lines.append(f"{_set_label(name):<15} {pct(scores['mIoU'])}   ({name}, {len(scores['classes'])} classes: "
                         f"{', '.join(scores['classes'])})")
    lines.append(f"{'pixel acc':<15} {pct(summary['pixel_acc'])}")
    lines.append(f"{'mean acc':<15} {pct(summary['mean_acc'])}")
    ips = summary["images_per_s"]
    lines.append(f"{summary['num_images']} images in {summary['seconds']:.1f} s: "
                 f"{ips if ips is None else round(ips, 2)} images/s (end to end, data loading included)")
    return "\n".join(lines)


def write_csv(summary: dict, path: str | Path) -> None:
    """One row per class (IoU and accuracy in [0, 1], empty when undefined or not scored), then the mean row
    (the protocol's main class set) and, for the SYNTHIA protocols, one `mean_<set>` row per class set."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["class", "iou", "acc"])
    for name in CLASSES:
        iou, acc = summary["per_class"][name], summary["per_class_acc"][name]
        writer.writerow([name, "" if iou is None else f"{iou:.6f}", "" if acc is None else f"{acc:.6f}"])
    writer.writerow(["mean", "" if summary["mIoU"] is None else f"{summary['mIoU']:.6f}",
                     "" if summary["mean_acc"] is None else f"{summary['mean_acc']:.6f}"])
    if summary.get("protocol", {}).get("classes", "cityscapes19") != "cityscapes19":
        for name, scores in summary["class_sets"].items():
            writer.writerow([f"mean_{name}", "" if scores["mIoU"] is None else f"{scores['mIoU']:.6f}",
                             "" if scores["mean_acc"] is None else f"{scores['mean_acc']:.6f}"])
    write_text_atomic(path, buf.getvalue())


def _check_output(path: str | None, flag: str) -> None:
    """Fail before the (long) evaluation when an output file cannot be written."""
    if path is None:
        return
    target = Path(path)
    if target.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder, expected a file name")
    parent = target.parent
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"{flag} {path}: {parent} is not a folder")


def make_saver(dataset, writer: PredictionWriter):
    """An `on_batch` callback writing each prediction (result PNG, colour, overlay on the original image)."""
    position = {"index": 0}  # the loader is sequential, so the running count is the dataset index

    def on_batch(batch: dict, preds: list[torch.Tensor]) -> None:
        for name, pred in zip(batch["name"], preds):
            index = position["index"]
            position["index"] += 1
            image_path = dataset.image_path(index)
            image = np.asarray(Image.open(image_path).convert("RGB"))
            writer.write(name, pred.to("cpu", torch.uint8), image, image_file=str(image_path),
                         label_file=str(dataset.label_path(index)))
    return on_batch


def main(argv: Sequence[str] | None = None) -> dict:
    """Evaluate, print the table, write the requested files; returns the JSON summary."""
    args = get_parser().parse_args(argv)
    _check_output(args.json, "--json")
    _check_output(args.csv, "--csv")
    for path, flag in ((args.json, "--json"), (args.csv, "--csv"), (args.save_pred, "--save-pred")):
        if path:
            check_output(path, flag, folder=flag == "--save-pred")
    if args.save_pred:
        check_prediction_folder(args.save_pred, "--save-pred", overwrite=args.overwrite_pred,
                                own_files=[f for f in (args.json, args.csv) if f])
    protocol, why = resolve_protocol(args.protocol, str(args.restore_from))
    device = resolve_device(args.device)
    check_amp(device, args.amp, args.allow_slow_bf16)
    args.device = device
    dataset = build_dataset(args.dataset, args.data_dir, args.split, list_path=args.data_list,
                            size=args.input_size, labels=True, label_size=args.label_size, exclude=args.exclude)
    net = load_net(args.restore_from, arch=args.arch, allow_pickle=args.allow_pickle, device=device)
    if args.fold_bn:
        net = fold_batchnorm(net)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    num_classes = getattr(net, "num_classes", NUM_CLASSES)
    if num_classes != NUM_CLASSES:
        raise ConfigError(f"--restore-from {args.restore_from}: the net predicts {num_classes} classes, "
                          f"the benchmark has {NUM_CLASSES}")
    announce(device, torch_form(args.amp, args.channels_last, args.fold_bn))
    subset = dataset if args.limit is None else Subset(dataset, range(min(args.limit, len(dataset))))
    loader = DataLoader(subset, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers,
                        collate_fn=eval_collate, pin_memory=device.type == "cuda")
    writer = PredictionWriter(args.save_pred, args.dataset, layout=dataset.layout) if args.save_pred else None
    if writer and args.overwrite_pred:  # every input is checked: the earlier predictions can go
        clear_predictions(writer.out_dir)
    if writer and args.label_size == "input":
        print("eval_cs.py: note: --label-size input saves predictions at the input size; the official "
              "evaluator needs them at the label's full size (the default --label-size full)", file=sys.stderr)
    on_batch = make_saver(dataset, writer) if writer else None
    result = evaluate(net, loader, device, num_classes=NUM_CLASSES, label_size=args.label_size, flip=args.flip,
                      scales=args.scales, amp=args.amp, channels_last=args.channels_last, on_batch=on_batch,
                      progress=not args.no_progress)
    summary = summarize(result, args, len(dataset), protocol)
    summary["arch"] = getattr(net, "arch", args.arch)
    summary["protocol"]["classes_from"] = why
    print(f"{summary['arch']} from {args.restore_from} on {args.dataset} {args.split} "
          f"({summary['num_images']} images, input {args.input_size[0]}x{args.input_size[1]}, "
          f"labels at {args.label_size} size, flip={args.flip}, scales={list(args.scales)})")
    print(f"classes: {protocol} ({why})")
    print(format_table(summary))
    if writer:
        summary["predictions"] = str(writer.out_dir)
        manifest = writer.write_manifest(checkpoint=str(args.restore_from))
        print(f"predictions: {manifest.parent} (official-format PNGs in {writer.result_dir})")
    if args.json:
        write_text_atomic(args.json, json.dumps(summary, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.csv:
        write_csv(summary, args.csv)
        print(f"wrote {args.csv}")
    return summary


if __name__ == "__main__":
    sys.exit(run_cli(main))
