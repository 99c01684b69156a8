"""Export a segmentation net to ONNX (dynamic batch/height/width), check it with onnxruntime, print a model card.

    python export_onnx.py --restore-from runs/student/final.pth --out student.onnx
    python export_onnx.py --restore-from student.pth --compare teacher.pth --out student.onnx
    python export_onnx.py --arch drn_d_22 --compare-arch drn_d_38 --out student_card.onnx   # untrained nets
    python export_onnx.py --restore-from student.pth --out student.onnx --int8 \
        --calib-data data/cityscapes/leftImg8bit/train --eval-data data/cityscapes   # + student.int8.onnx, scored

The graph takes a normalised RGB image `image` (N, 3, H, W) (see dataset.transforms.NORMALIZE) and
returns the main head's log-probabilities `main` (N, 19, H, W) (and `aux` with --with-aux), or with
--logits its logits (the same arg-max; predict.py --onnx takes either). The model card gives parameters,
GFLOPs (2 x multiply-adds of the convolutions) at --card-size, and the CPU latency of PyTorch and
onnxruntime at --latency-size. With --int8, a statically quantised copy NAME.int8.onnx is written beside
--out (utils/quantize.py: QDQ, per-channel int8 weights, uint8 activations calibrated on images of
--calib-data, preprocessed as predict.py does). --eval-data scores the fp32 (and int8) graph on a
labelled split with the project's metrics (utils/metrics.py), so the card shows the mIoU each form
costs. `onnx` and `onnxruntime` are optional dependencies (`pip install onnx onnxruntime`).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Subset

from dataset import build_dataset
from model import SEG_ARCHS, build_seg_model
from utils.cli import ArgumentParser, check_output, finite_float, positive_int, run_cli, size_arg
from utils.cpu import announce
from utils.errors import ConfigError
from utils.evaluate import load_net
from utils.files import StagedOutputs
from utils.model_card import format_cards, model_card
from utils.onnx_export import MIN_OPSET, OPSET, export, parity
from utils.onnx_net import ort_session, require
from utils.onnx_score import score_graphs
from utils.quantize import CALIB_COUNT, int8_path, quantize_int8, readable_calibration_files

CHECK_SIZES = "128,64 100,60"  # W,H pairs; one not a multiple of 8
CARD_SIZE = "1024,512"
LATENCY_SIZE = "1024,512"
RUNS = 3
TOLERANCE = 1e-4
INPUT_SIZE = "1024,512"
EVAL_DATASETS = ("cityscapes", "bdd")


def sizes_arg(text: str) -> list[tuple[int, int]]:
    """'W,H W,H ...' -> list of (w, h), at least one."""
    sizes = [size_arg(part) for part in text.split()]
    if not sizes:
        raise argparse.ArgumentTypeError(f"expected one or more W,H sizes separated by spaces, got {text!r}")
    return sizes


def opset_arg(text: str) -> int:
    """argparse `type=` for an ONNX opset the nets can be exported with."""
    value = positive_int(text)
    if value < MIN_OPSET:
        raise argparse.ArgumentTypeError(f"expected an ONNX opset >= {MIN_OPSET} (the nets' bilinear upsampling "
                                         f"needs it), got {text!r}")
    return value


def get_parser() -> ArgumentParser:
    """Flags of export_onnx.py, defaults from the constants above."""
    p = ArgumentParser(prog="export_onnx.py", description=__doc__.splitlines()[0])
    p.add_argument("--restore-from", default=None, help="checkpoint to export (omit with --arch: untrained net)")
    p.add_argument("--arch", choices=SEG_ARCHS, default=None, help="architecture (foreign checkpoints / no checkpoint)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="UNSAFE: allow unpickling a trusted legacy checkpoint (runs code from the file)")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--with-aux", action="store_true", help="also output the auxiliary head")
    p.add_argument("--logits", action="store_true",
                   help="output the main head's logits instead of log-probabilities: same arg-max, no full-size "
                        "log-softmax (about a third of an int8 graph's time); for deployment")
    p.add_argument("--opset", type=opset_arg, default=OPSET, help=f"ONNX opset (default {OPSET}, at least {MIN_OPSET})")
    p.add_argument("--check-sizes", type=sizes_arg, default=sizes_arg(CHECK_SIZES),
                   help="'W,H W,H': sizes of the onnxruntime-vs-PyTorch check")
    p.add_argument("--tolerance", type=finite_float, default=TOLERANCE, help="largest accepted max abs difference")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime check")
    p.add_argument("--card-size", type=size_arg, default=size_arg(CARD_SIZE), help="W,H for the GFLOPs")
    p.add_argument("--latency-size", type=size_arg, default=size_arg(LATENCY_SIZE), help="W,H for the latency")
    p.add_argument("--runs", type=positive_int, default=RUNS, help="timed runs (median reported; 0 warm-up)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--compare", default=None, help="second checkpoint for the card (e.g. the teacher)")
    p.add_argument("--compare-arch", choices=SEG_ARCHS, default=None, help="second (untrained) net for the card")
    p.add_argument("--int8", action="store_true", help="also write NAME.int8.onnx beside --out: static int8 "
                                                       "quantisation calibrated on --calib-data")
    p.add_argument("--calib-data", default=None, metavar="DIR", help="folder of images (recursive) for the int8 "
                                                                     "calibration, e.g. a train split's images")
    p.add_argument("--calib-count", type=positive_int, default=CALIB_COUNT, help="calibration images (spread over "
                                                                                 "the folder)")
    p.add_argument("--input-size", type=size_arg, default=size_arg(INPUT_SIZE),
                   help="W,H the images are resized to for calibration and --eval-data (as predict.py, eval_cs.py)")
    p.add_argument("--eval-data", default=None, metavar="DIR", help="dataset root of a labelled split: score the "
                                                                    "fp32 (and int8) graph on it")
    p.add_argument("--dataset", choices=EVAL_DATASETS, default="cityscapes", help="layout of --eval-data")
    p.add_argument("--split", default="val", help="split of --eval-data")
    p.add_argument("--eval-limit", type=positive_int, default=None, help="score only the first N images")
    p.add_argument("--json", default=None, help="write the check and the model card to this JSON file")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return p


def _load(path: str | None, arch: str | None, allow_pickle: bool,
          flag: str = "--restore-from") -> tuple[str, nn.Module]:
    """(display name, net on the CPU in eval mode) from a checkpoint, or an untrained `arch`."""
    if path is None:
        if arch is None:
            raise ConfigError("give --restore-from CKPT (or --arch ARCH to export an untrained net)")
        return f"{arch} (untrained)", build_seg_model(arch).eval()
    net = load_net(path, arch=arch, allow_pickle=allow_pickle, flag=flag)
    return f"{getattr(net, 'arch', arch)} ({Path(path).name})", net


def check_paths(args) -> None:
    """Every output writable, and none of them one of the inputs or another output (`ConfigError` naming both)."""
    outputs = {"--out": args.out}
    if args.int8:
        outputs["--int8 (NAME.int8.onnx beside --out)"] = int8_path(args.out)
    if args.json:
        outputs["--json"] = args.json
    for flag, path in outputs.items():
        check_output(path, flag)
    inputs = {"--restore-from": args.restore_from, "--compare": args.compare, "--calib-data": args.calib_data,
              "--eval-data": args.eval_data}
    seen = {Path(path).resolve(): flag for flag, path in inputs.items() if path and "://" not in str(path)}
    for flag, path in outputs.items():
        key = Path(path).resolve()
        if key in seen:
            role = "an input" if seen[key] in inputs else "another output"
            raise ConfigError(f"{flag} {path}: the same file as {seen[key]}, {role}; writing there would "
                              f"{'overwrite it' if role == 'an input' else 'write it twice'}: choose another name")
        seen[key] = flag


def load_eval_data(args):
    """The labelled split --eval-data names (its layout checked now), limited to --eval-limit images."""
    data = build_dataset(args.dataset, args.eval_data, args.split, size=args.input_size, labels=True,
                         label_size="full")
    return data if args.eval_limit is None else Subset(data, range(min(args.eval_limit, len(data))))


def main(argv: Sequence[str] | None = None) -> dict:
    """Check every input, then export, check, quantise, score and print the model card; returns all measured.

    Nothing is written until every input has been read and checked; the graphs and the JSON are
    written under temporary names and renamed into place together at the end.
    """
    args = get_parser().parse_args(argv)
    if args.compare and args.compare_arch:
        raise ConfigError("give --compare CKPT or --compare-arch ARCH, not both")
    if args.logits and args.with_aux:
        raise ConfigError("--logits exports the main head alone: drop --with-aux")
    if args.int8 and args.calib_data is None:
        raise ConfigError("--int8 needs --calib-data DIR (a folder of images to calibrate on)")
    for flag, given in (("--int8", args.int8), ("--eval-data", args.eval_data)):
        if given and args.no_check:
            raise ConfigError(f"{flag} runs onnxruntime: drop --no-check")
    check_paths(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    require("onnx")
    if not args.no_check:
        require("onnxruntime")  # fail before the export, not after
    calib = readable_calibration_files(args.calib_data, args.calib_count) if args.int8 else None
    eval_data = load_eval_data(args) if args.eval_data else None
    name, net = _load(args.restore_from, args.arch, args.allow_pickle)
    other = None
    if args.compare or args.compare_arch:  # loaded before the export: a bad --compare must not cost one
        other = _load(args.compare, args.compare_arch, args.allow_pickle, flag="--compare")
    announce(torch.device("cpu"), _choice(args))
    with StagedOutputs() as staged:
        report = _export_and_measure(args, name, net, other, calib, eval_data, staged)
        if args.json:
            staged.stage(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        staged.commit()
    print(f"wrote {args.out}" + (f", {report['int8']}" if args.int8 else "") + (f", {args.json}" if args.json else ""))
    return report


def _choice(args) -> str:
    """What this run does on the CPU, for the machine line."""
    forms = "fp32" + (" and int8" if args.int8 else "")
    timed = "no latency" if args.no_latency else "latency of torch fp32 and the onnxruntime graphs on this CPU"
    return f"export {forms} graphs; {timed}"


def _export_and_measure(args, name: str, net: nn.Module, other, calib, eval_data, staged: StagedOutputs) -> dict:
    """Export (and quantise) into staged files, check them against PyTorch, score them, measure the cards."""
    out = export(net, staged.stage(args.out), with_aux=args.with_aux, logits=args.logits, opset=args.opset)
    size_mb = out.stat().st_size / 2**20
    print(f"exported {name} to {args.out} ({size_mb:.1f} MB, opset {args.opset}, dynamic batch/height/width, "
          f"outputs: {'main, aux' if args.with_aux else 'main'} {'logits' if args.logits else 'log-probabilities'})")
    report: dict = {"onnx": str(args.out), "onnx_mb": size_mb, "opset": args.opset}
    session = int8_session = None
    if not args.no_check:
        session = ort_session(out, args.threads)
        checks = parity(net, session, args.check_sizes, with_aux=args.with_aux, logits=args.logits)
        worst = max(c["max_abs_diff"] for c in checks)
        for c in checks:
            print(f"check {c['size'][0]}x{c['size'][1]} {c['output']}: max abs diff {c['max_abs_diff']:.2e}")
        report.update({"check": checks, "max_abs_diff": worst, "tolerance": args.tolerance})
        if worst > args.tolerance:
            raise ConfigError(f"onnxruntime and PyTorch differ by {worst:.2e} > --tolerance {args.tolerance:g}")
        print(f"onnxruntime matches PyTorch: max abs diff {worst:.2e} <= {args.tolerance:g}")
    graphs = {"fp32": out}
    if args.int8:
        final = int8_path(args.out)
        graphs["int8"] = staged.stage(final)
        info = quantize_int8(out, graphs["int8"], calib, args.input_size, args.calib_count)
        int8_mb = graphs["int8"].stat().st_size / 2**20
        print(f"quantised to {final} ({int8_mb:.1f} MB; QDQ, per-channel int8 weights, uint8 activations "
              f"calibrated on {info['calib_images']} images of {args.calib_data} at "
              f"{args.input_size[0]}x{args.input_size[1]})")
        report.update({"int8": str(final), "int8_mb": int8_mb, "quantization": {**info, "int8": str(final)}})
        int8_session = ort_session(graphs["int8"], args.threads)
    latency = None if args.no_latency else args.latency_size
    cards = [model_card(name, net, args.card_size, latency, args.runs, session, int8_session)]
    if eval_data is not None:
        about = {"dataset": args.dataset, "data_dir": str(args.eval_data), "split": args.split,
                 "input_size": list(args.input_size)}
        cards[0]["eval"] = score_graphs(graphs, eval_data, about, args.threads)
    if other is not None:
        cards.append(model_card(other[0], other[1], args.card_size, latency, args.runs))
    print(format_cards(cards))
    report["cards"] = cards  # each card's environment names the CPU and what it runs fast (utils/cpu.py)
    return report


if __name__ == "__main__":
    sys.exit(run_cli(main))
