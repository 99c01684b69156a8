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
import copy
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torch.utils.flop_counter import FlopCounterMode

from dataset import build_dataset
from model import SEG_ARCHS, build_seg_model, count_parameters
from utils.cli import ArgumentParser, check_output, finite_float, one_line, positive_int, run_cli, size_arg
from utils.errors import ConfigError
from utils.evaluate import eval_collate, evaluate, load_net
from utils.files import write_text_atomic
from utils.logger import describe_machine, environment
from utils.onnx_net import OnnxSegNet, ort_session, require
from utils.quantize import CALIB_COUNT, calibration_files, int8_path, quantize_int8

OPSET = 17
MIN_OPSET = 11  # the bilinear upsampling with align_corners=True has no ONNX form before opset 11
CHECK_SIZES = "128,64 100,60"  # W,H pairs; one not a multiple of 8
CARD_SIZE = "1024,512"
LATENCY_SIZE = "1024,512"
RUNS = 3
TOLERANCE = 1e-4
SEED = 1234
INPUT_SIZE = "1024,512"
EVAL_DATASETS = ("cityscapes", "bdd")


class ExportWrapper(nn.Module):
    """The net's main head (and the aux head with `with_aux`) as the graph's outputs: log-probabilities,
    or with `logits` the main head's logits (what an arg-max needs, without a full-size log-softmax)."""

    def __init__(self, net: nn.Module, with_aux: bool = False, logits: bool = False) -> None:
        super().__init__()
        if with_aux and logits:
            raise ConfigError("--logits exports the main head alone: drop --with-aux")
        self.net = net
        self.with_aux = with_aux
        self.logits = logits

    def forward(self, image: torch.Tensor):
        """`main` log-probabilities (or logits), or `(main, aux)`."""
        if self.logits:
            return self.net.main_logits(image)
        aux, main = self.net(image)
        return (main, aux) if self.with_aux else main


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


def export(net: nn.Module, path: str | Path, *, with_aux: bool = False, logits: bool = False, opset: int = OPSET,
           sample_size: tuple[int, int] = (128, 64)) -> Path:
    """Write `net` as ONNX with dynamic batch, height and width; returns the path."""
    require("onnx")
    wrapper = ExportWrapper(net, with_aux, logits).eval()  # eval before export: the exporter restores this mode
    w, h = sample_size
    sample = torch.randn(1, 3, h, w)
    outputs = ["main", "aux"] if with_aux else ["main"]
    axes = {name: {0: "batch", 2: "height", 3: "width"} for name in ["image", *outputs]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # an existing --out stays until the export has worked; the partial file goes whatever stops the export
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter announces its deprecation and tracer notes
            torch.onnx.export(wrapper, (sample,), str(partial), opset_version=opset, dynamo=False,
                              input_names=["image"], output_names=outputs, dynamic_axes=axes)
        require("onnx").checker.check_model(str(partial))
        os.replace(partial, path)
    except ConfigError:
        raise
    except Exception as err:  # the exporter's errors have no common type (RuntimeError, SymbolicValueError, ...)
        raise ConfigError(f"the ONNX export with --opset {opset} failed: {one_line(err)}") from err
    finally:
        partial.unlink(missing_ok=True)
    return path


@torch.inference_mode()
def check_onnx(net: nn.Module, session, sizes: Sequence[tuple[int, int]], *, with_aux: bool = False,
               logits: bool = False,
               seed: int = SEED) -> list[dict]:
    """Max abs difference between onnxruntime and PyTorch outputs on seeded random images per (w, h)."""
    wrapper = ExportWrapper(net, with_aux, logits).eval()
    gen = torch.Generator().manual_seed(seed)
    report = []
    for w, h in sizes:
        x = torch.randn(2, 3, h, w, generator=gen)
        ref = wrapper(x)
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = session.run(None, {"image": x.numpy()})
        for name, r, g in zip(["main", "aux"], ref, got):
            if tuple(g.shape) != tuple(r.shape):
                raise RuntimeError(f"ONNX output {name} has shape {g.shape}, PyTorch {tuple(r.shape)} at {w}x{h}")
            report.append({"size": [w, h], "output": name,
                           "max_abs_diff": float((torch.from_numpy(g) - r).abs().max())})
    return report


def gflops(net: nn.Module, size: tuple[int, int]) -> float:
    """GFLOPs (2 x multiply-adds, convolutions and matmuls) of one forward pass on a (1, 3, H, W) image.

    Counted on a meta-device copy, so nothing is computed and any size is instant.
    """
    w, h = size
    meta = copy.deepcopy(net).to("meta").eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(torch.empty(1, 3, h, w, device="meta"))
    return counter.get_total_flops() / 1e9


def _median_ms(fn, runs: int) -> float:
    fn()  # warm-up: allocator and kernel selection
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000.0 * statistics.median(times)


@torch.inference_mode()
def latency_ms(net: nn.Module, size: tuple[int, int], runs: int = RUNS, session=None, int8_session=None) -> dict:
    """Median CPU latency (ms) of the main head on one (1, 3, H, W) image: PyTorch, and the onnxruntime
    sessions given (fp32, int8)."""
    w, h = size
    x = torch.randn(1, 3, h, w)
    net = net.eval()
    result = {"size": [w, h], "runs": runs, "threads": torch.get_num_threads(),
              "torch_ms": _median_ms(lambda: net(x), runs)}
    if session is not None:
        feed = {"image": x.numpy()}
        result["onnxruntime_ms"] = _median_ms(lambda: session.run(None, feed), runs)
    if int8_session is not None:
        feed = {"image": x.numpy()}
        result["onnxruntime_int8_ms"] = _median_ms(lambda: int8_session.run(None, feed), runs)
    return result


def model_card(name: str, net: nn.Module, args, session=None, int8_session=None) -> dict:
    """Parameters, GFLOPs and latency of one net, and the machine (torch, CPU capability, GPU) that measured them."""
    aux_params = count_parameters(net.aux_head) if hasattr(net, "aux_head") else 0
    card = {"name": name, "arch": getattr(net, "arch", None), "aux_layer": getattr(net, "aux_layer", None),
            "params": count_parameters(net), "params_inference": count_parameters(net) - aux_params,
            "gflops": gflops(net, args.card_size), "card_size": list(args.card_size), "environment": environment()}
    if not args.no_latency:
        card["latency"] = latency_ms(net, args.latency_size, args.runs, session, int8_session)
    return card


def format_cards(cards: list[dict]) -> str:
    """The model card table printed on stdout."""
    w, h = cards[0]["card_size"]
    head = (f"{'model':<24} {'params (M)':>10} {'main only':>10} {f'GFLOPs@{w}x{h}':>16} "
            f"{'torch ms':>9} {'onnxrt ms':>9} {'int8 ms':>9}")
    lines = [head, "-" * len(head)]
    for c in cards:
        lat = c.get("latency", {})
        torch_ms = f"{lat['torch_ms']:9.0f}" if "torch_ms" in lat else f"{'-':>9}"
        ort_ms, int8_ms = (f"{lat[key]:9.0f}" if key in lat else f"{'-':>9}"
                           for key in ("onnxruntime_ms", "onnxruntime_int8_ms"))
        lines.append(f"{c['name'][:24]:<24} {c['params'] / 1e6:10.2f} {c['params_inference'] / 1e6:10.2f} "
                     f"{c['gflops']:16.1f} {torch_ms} {ort_ms} {int8_ms}")
        if "eval" in c:
            lines.append("  " + format_eval(c["eval"]))
    if cards and "latency" in cards[0]:
        lat = cards[0]["latency"]
        lines.append(f"latency: median of {lat['runs']} runs, batch 1 at {lat['size'][0]}x{lat['size'][1]}, "
                     f"CPU, {lat['threads']} threads; GFLOPs = 2 x conv multiply-adds")
    if cards and "environment" in cards[0]:
        lines.append(f"machine: {describe_machine(cards[0]['environment'])}")
    return "\n".join(lines)


def score_graphs(paths: dict[str, Path], args) -> dict:
    """mIoU (and pixel accuracy) of each graph on --eval-data with utils.evaluate / utils.metrics, and
    the int8 graph's loss against fp32 in mIoU points."""
    dataset = build_dataset(args.dataset, args.eval_data, args.split, size=args.input_size, labels=True,
                            label_size="full")
    subset = dataset if args.eval_limit is None else Subset(dataset, range(min(args.eval_limit, len(dataset))))
    scores = {"dataset": args.dataset, "data_dir": str(args.eval_data), "split": args.split,
              "input_size": list(args.input_size)}
    for form, path in paths.items():
        loader = DataLoader(subset, batch_size=1, collate_fn=eval_collate)
        result = evaluate(OnnxSegNet(path, args.threads), loader, "cpu", progress=False)
        scores[form] = {"mIoU": 100 * result["mIoU"], "pixel_acc": 100 * result["pixel_acc"],
                        "num_images": result["num_images"]}
    if "int8" in scores:
        scores["int8_minus_fp32"] = scores["int8"]["mIoU"] - scores["fp32"]["mIoU"]
    return scores


def format_eval(scores: dict) -> str:
    """One line: the mIoU of each scored graph (and the int8 graph's difference)."""
    forms = [f"{form} {scores[form]['mIoU']:.2f}" for form in ("fp32", "int8") if form in scores]
    diff = f" (int8 - fp32: {scores['int8_minus_fp32']:+.2f})" if "int8_minus_fp32" in scores else ""
    return (f"mIoU on {scores['dataset']} {scores['split']} ({scores['fp32']['num_images']} images at "
            f"{scores['input_size'][0]}x{scores['input_size'][1]}): {', '.join(forms)}{diff}")


def _load(path: str | None, arch: str | None, allow_pickle: bool,
          flag: str = "--restore-from") -> tuple[str, nn.Module]:
    """(display name, net on the CPU in eval mode) from a checkpoint, or an untrained `arch`."""
    if path is None:
        if arch is None:
            raise ConfigError("give --restore-from CKPT (or --arch ARCH to export an untrained net)")
        return f"{arch} (untrained)", build_seg_model(arch).eval()
    net = load_net(path, arch=arch, allow_pickle=allow_pickle, flag=flag)
    return f"{getattr(net, 'arch', arch)} ({Path(path).name})", net


def main(argv: Sequence[str] | None = None) -> dict:
    """Export, check, print the model card; returns everything measured."""
    args = get_parser().parse_args(argv)
    if args.compare and args.compare_arch:
        raise ConfigError("give --compare CKPT or --compare-arch ARCH, not both")
    if args.logits and args.with_aux:
        raise ConfigError("--logits exports the main head alone: drop --with-aux")
    check_output(args.out, "--out")
    if args.int8:
        if args.calib_data is None:
            raise ConfigError("--int8 needs --calib-data DIR (a folder of images to calibrate on)")
        if args.no_check:
            raise ConfigError("--int8 runs onnxruntime: drop --no-check")
        calibration_files(args.calib_data, args.calib_count)  # a bad folder fails before the export
        check_output(int8_path(args.out), "--int8 (NAME.int8.onnx beside --out)")
    if args.eval_data and args.no_check:
        raise ConfigError("--eval-data runs onnxruntime: drop --no-check")
    if args.json:
        check_output(args.json, "--json")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.no_check:
        require("onnxruntime")  # fail before the export, not after
    name, net = _load(args.restore_from, args.arch, args.allow_pickle)
    other = None
    if args.compare or args.compare_arch:  # loaded before the export: a bad --compare must not cost one
        other = _load(args.compare, args.compare_arch, args.allow_pickle, flag="--compare")
    out = export(net, args.out, with_aux=args.with_aux, logits=args.logits, opset=args.opset)
    size_mb = out.stat().st_size / 2**20
    print(f"exported {name} to {out} ({size_mb:.1f} MB, opset {args.opset}, dynamic batch/height/width, "
          f"outputs: {'main, aux' if args.with_aux else 'main'} {'logits' if args.logits else 'log-probabilities'})")
    report: dict = {"onnx": str(out), "onnx_mb": size_mb, "opset": args.opset}
    session = None
    if not args.no_check:
        session = ort_session(out, args.threads)
        checks = check_onnx(net, session, args.check_sizes, with_aux=args.with_aux, logits=args.logits)
        worst = max(c["max_abs_diff"] for c in checks)
        for c in checks:
            print(f"check {c['size'][0]}x{c['size'][1]} {c['output']}: max abs diff {c['max_abs_diff']:.2e}")
        report.update({"check": checks, "max_abs_diff": worst, "tolerance": args.tolerance})
        if worst > args.tolerance:
            raise ConfigError(f"onnxruntime and PyTorch differ by {worst:.2e} > --tolerance {args.tolerance:g}")
        print(f"onnxruntime matches PyTorch: max abs diff {worst:.2e} <= {args.tolerance:g}")
    int8_session = None
    if args.int8:
        info = quantize_int8(out, int8_path(args.out), args.calib_data, args.input_size, args.calib_count)
        int8_mb = Path(info["int8"]).stat().st_size / 2**20
        print(f"quantised to {info['int8']} ({int8_mb:.1f} MB; QDQ, per-channel int8 weights, uint8 activations "
              f"calibrated on {info['calib_images']} images of {args.calib_data} at "
              f"{args.input_size[0]}x{args.input_size[1]})")
        report.update({"int8": info["int8"], "int8_mb": int8_mb, "quantization": info})
        int8_session = ort_session(info["int8"], args.threads)
    cards = [model_card(name, net, args, session, int8_session)]
    if args.eval_data:
        graphs = {"fp32": out, **({"int8": Path(report["int8"])} if args.int8 else {})}
        cards[0]["eval"] = score_graphs(graphs, args)
    if other is not None:
        cards.append(model_card(other[0], other[1], args))
    print(format_cards(cards))
    report["cards"] = cards
    if args.json:
        write_text_atomic(args.json, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    sys.exit(run_cli(main))
