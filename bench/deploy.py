"""Deployment latency table: every inference form of the student and the teacher beside the machine's roof.

    python benchmark.py --deploy [--repeats 3] [--nets student] [--size 1024,512] [--json deploy.json]
        [--quick] [--allow-slow-bf16]

Forms, batch 1, each at 1024x512 and 2048x1024: PyTorch fp32, plain and with channels_last and folded
batch norms; PyTorch bf16 autocast with channels_last and folded batch norms; onnxruntime fp32;
onnxruntime int8 (static QDQ, per-channel, utils/quantize.py).
Every form computes the main head's logits at the input's size: the PyTorch forms with `main_logits`
(predict.py's path), the graphs as export_onnx.py --logits writes them. Each row gives milliseconds
(median and min over the repeats, taken round-robin over the forms), frames per second and achieved
GFLOP/s (utils.flops.gflops: 2 x multiply-adds, the same count for every number type), and that as a
share of the roof of its library and number type, timed in the same round-robin as the forms of each
(net, size), median over the repeats: an (n x n) by (n x n) product as a 1x1 convolution in PyTorch (oneDNN, the
library that runs the nets' convolutions) in fp32 and bf16, and as MatMul (fp32) and MatMulInteger
(uint8 x int8) graphs in onnxruntime (MLAS). A form this CPU has no native instructions for (bf16
without AVX-512 BF16 or AMX, utils/cpu.py) is skipped with a note, unless --allow-slow-bf16. The
header and the JSON name the CPU's capabilities; progress (form, net, size) goes to stderr. Calibration
images for int8: synthetic Cityscapes frames (the speed of an int8 graph does not depend on its
calibration).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model import build_seg_model, fold_batchnorm
from utils.cpu import cpu_info, fastest_form, native
from utils.files import write_text_atomic
from utils.flops import gflops
from utils.onnx_export import export
from utils.onnx_net import ort_session, require
from utils.quantize import quantize_int8

NETS = (("student", "drn_d_22"), ("teacher", "drn_d_38"))
SIZES = ((1024, 512), (2048, 1024))
FORMS = ("torch fp32", "torch fp32+CL+foldBN", "torch bf16+CL+foldBN", "onnxruntime fp32", "onnxruntime int8")
NUMBER_TYPE = {"torch fp32": "fp32", "torch fp32+CL+foldBN": "fp32", "torch bf16+CL+foldBN": "bf16",
               "onnxruntime fp32": "fp32", "onnxruntime int8": "int8"}
# each form against the roof of the library and number type that run it
ROOF_OF = {"torch fp32": "torch fp32", "torch fp32+CL+foldBN": "torch fp32", "torch bf16+CL+foldBN": "torch bf16",
           "onnxruntime fp32": "onnxruntime fp32", "onnxruntime int8": "onnxruntime int8"}
ROOF_N = 4096                # side of the square matrices of the roof
REPEATS = 3
CALIB_SIZE = (512, 256)      # (w, h) of the calibration images
CALIB_COUNT = 2
# a smoke run: the student alone (the teacher runs the same code), one tiny size
QUICK = {"sizes": ((64, 32),), "roof_n": 256, "repeats": 1, "calib_size": (64, 32), "nets": NETS[:1]}
SEED = 0


def progress(text: str) -> None:
    """One progress line on stderr (the table goes to stdout)."""
    print(text, file=sys.stderr, flush=True)


def interleaved_times(forms: dict[str, Callable[[torch.Tensor], object]], x: torch.Tensor, repeats: int,
                      label: str = "") -> dict[str, list[float]]:
    """Seconds per call of each form on `x`: one warm-up call each, then `repeats` rounds of one call per form.

    Round-robin rather than form after form: on a shared machine a change of load then hits every
    form alike, and their ratio stays meaningful. Each call is announced on stderr with `label`.
    """
    times: dict[str, list[float]] = {name: [] for name in forms}
    for round_ in range(repeats + 1):
        for name, fn in forms.items():
            start = time.perf_counter()
            fn(x)
            seconds = time.perf_counter() - start
            if round_:
                times[name].append(seconds)
            progress(f"  {label} {name}: {'warm-up' if not round_ else f'round {round_}/{repeats}'} "
                     f"{1000 * seconds:.0f} ms")
    return times


# --- the roof --------------------------------------------------------------------------------------
def torch_conv_roof(dtype: torch.dtype, n: int) -> tuple[Callable[[], object], float]:
    """A call computing an (n, n) by (n, n) product as a 1x1 convolution (n channels in and out, n pixels,
    channels_last) in `dtype`, what oneDNN does best on the nets' convolutions, and its GFLOPs."""
    gen = torch.Generator().manual_seed(SEED)
    x = torch.randn(1, n, max(1, n // 64), min(n, 64), generator=gen).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(n, n, 1, 1, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)

    def call() -> object:
        with torch.inference_mode():
            return F.conv2d(x, weight)
    return call, 2 * n * n * x.shape[2] * x.shape[3] / 1e9


def matmul_graph(n: int, integer: bool):
    """An ONNX model: (n, n) input `a` times a constant (n, n) weight; float32 (MatMul) or, with `integer`,
    uint8 x int8 -> int32 (MatMulInteger)."""
    onnx = require("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(SEED)
    if integer:
        weight = rng.integers(-127, 128, (n, n), dtype=np.int8)
        node, kinds = "MatMulInteger", (TensorProto.UINT8, TensorProto.INT32)
    else:
        weight = rng.standard_normal((n, n), dtype=np.float32)
        node, kinds = "MatMul", (TensorProto.FLOAT, TensorProto.FLOAT)
    graph = helper.make_graph(
        [helper.make_node(node, ["a", "w"], ["y"])], f"{node}_roof",
        [helper.make_tensor_value_info("a", kinds[0], [n, n])], [helper.make_tensor_value_info("y", kinds[1], [n, n])],
        [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def onnxruntime_matmul_roof(n: int, folder: Path, threads: int, integer: bool) -> tuple[Callable[[], object], float]:
    """A call computing an (n, n) matrix product through onnxruntime (float32, or uint8 x int8), and its
    GFLOPs (2 x multiply-adds)."""
    path = folder / f"roof_{'int8' if integer else 'fp32'}.onnx"
    path.write_bytes(matmul_graph(n, integer).SerializeToString())
    session = ort_session(path, threads)
    rng = np.random.default_rng(SEED + 1)
    a = rng.integers(0, 256, (n, n), dtype=np.uint8) if integer else rng.standard_normal((n, n), dtype=np.float32)
    return lambda: session.run(None, {"a": a}), 2 * n**3 / 1e9


def roof_calls(n: int, folder: Path, threads: int, kinds) -> dict[str, tuple[Callable[[], object], float]]:
    """For each roof in `kinds` (values of ROOF_OF), a call and its GFLOPs, timed among the forms."""
    makers = {"torch fp32": lambda: torch_conv_roof(torch.float32, n),
              "torch bf16": lambda: torch_conv_roof(torch.bfloat16, n),
              "onnxruntime fp32": lambda: onnxruntime_matmul_roof(n, folder, threads, False),
              "onnxruntime int8": lambda: onnxruntime_matmul_roof(n, folder, threads, True)}
    return {kind: makers[kind]() for kind in kinds}


# --- the forms -------------------------------------------------------------------------------------
def make_forms(net: torch.nn.Module, folder: Path, calib_dir: Path, calib_size: tuple[int, int], threads: int,
               names=FORMS) -> dict[str, Callable[[torch.Tensor], object]]:
    """One callable per form in `names`, each running the main head on a (1, 3, H, W) float image."""
    forms: dict[str, Callable[[torch.Tensor], object]] = {}
    if "torch fp32" in names:
        def torch_fp32(x: torch.Tensor) -> object:
            with torch.inference_mode():
                return net.main_logits(x)
        forms["torch fp32"] = torch_fp32
    fast = fold_batchnorm(net).to(memory_format=torch.channels_last)
    if "torch fp32+CL+foldBN" in names:
        def torch_fp32_fast(x: torch.Tensor) -> object:
            with torch.inference_mode():
                return fast.main_logits(x.contiguous(memory_format=torch.channels_last))
        forms["torch fp32+CL+foldBN"] = torch_fp32_fast
    if "torch bf16+CL+foldBN" in names:
        def torch_bf16(x: torch.Tensor) -> object:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return fast.main_logits(x.contiguous(memory_format=torch.channels_last))
        forms["torch bf16+CL+foldBN"] = torch_bf16
    graphs = [name for name in ("onnxruntime fp32", "onnxruntime int8") if name in names]
    if graphs:
        fp32_path = export(net, folder / f"{net.arch}.onnx", logits=True)
        paths = {"onnxruntime fp32": fp32_path}
        if "onnxruntime int8" in graphs:
            paths["onnxruntime int8"] = folder / f"{net.arch}.int8.onnx"
            quantize_int8(fp32_path, paths["onnxruntime int8"], calib_dir, calib_size, CALIB_COUNT)
        for name in graphs:
            session = ort_session(paths[name], threads)
            forms[name] = lambda x, session=session: session.run(None, {"image": x.numpy()})
    return forms


def calibration_folder(folder: Path, size: tuple[int, int]) -> Path:
    """A few synthetic Cityscapes frames at `size` to calibrate the int8 graphs on."""
    from dataset.synthetic import generate

    generate(folder / "synthetic", CALIB_COUNT, 1, size, SEED, ["cityscapes"])
    return folder / "synthetic" / "cityscapes" / "leftImg8bit" / "train"


def runnable_forms(allow_slow_bf16: bool = False) -> tuple[list[str], dict[str, str]]:
    """The forms to time on this CPU, and a note for each one skipped (no native instructions for it)."""
    info, kept, skipped = cpu_info(), [], {}
    for form in FORMS:
        if native(info, NUMBER_TYPE[form]) or allow_slow_bf16:
            kept.append(form)
        else:
            skipped[form] = (f"skipped: this CPU has no native {NUMBER_TYPE[form]} instructions (emulated, it would "
                             f"take hundreds of times longer than fp32); --allow-slow-bf16 times it anyway")
    return kept, skipped


# --- the table -------------------------------------------------------------------------------------
def measure(sizes=SIZES, roof_n: int = ROOF_N, repeats: int = REPEATS, calib_size=CALIB_SIZE, nets=NETS,
            forms=FORMS) -> dict:
    """Every (net, size, form) row beside its roof, measured in this process; returns the rows and roofs.

    The roofs are timed in the same round-robin as the forms of each (net, size), so that a form and
    its roof see the same load: on a shared machine the load moves within minutes.
    """
    threads = torch.get_num_threads()
    kinds = list(dict.fromkeys(ROOF_OF[form] for form in forms))
    rows, roofs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        calib = calibration_folder(folder, calib_size)
        roof = roof_calls(roof_n, folder, threads, kinds)
        for role, arch in nets:
            torch.manual_seed(SEED)
            net = build_seg_model(arch).eval()
            progress(f"{role} {arch}: exporting and quantising the graphs")
            made = make_forms(net, folder, calib, calib_size, threads, forms)
            calls = {**made, **{f"roof {kind}": (lambda x, call=call: call()) for kind, (call, _) in roof.items()}}
            for w, h in sizes:
                work = gflops(net, (w, h))
                x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(SEED))
                times = interleaved_times(calls, x, repeats, f"{role} {arch} {w}x{h}")
                here = {kind: work_ / statistics.median(times[f"roof {kind}"]) for kind, (_, work_) in roof.items()}
                roofs.append({"model": role, "size": [w, h], "roof": here})
                for form in made:
                    rows.append(row(role, arch, (w, h), form, times[form], work, here))
                    print(format_row(rows[-1]), flush=True)
            del made, calls, net
    return {"roof_n": roof_n, "threads": threads, "repeats": repeats, "rows": rows, "roofs": roofs,
            "speedups": speedups(rows)}


def _join(roof: dict[str, float]) -> str:
    return ", ".join(f"{kind} {value:.0f}" for kind, value in roof.items())


def row(role: str, arch: str, size: tuple[int, int], form: str, times: list[float], work: float,
        roof: dict[str, float]) -> dict:
    """One table row from the measured seconds of one form."""
    med = statistics.median(times)
    kind = ROOF_OF[form]
    achieved = work / med
    return {"model": role, "arch": arch, "size": list(size), "form": form, "ms": 1000 * med,
            "min_ms": 1000 * min(times), "fps": 1 / med, "gflops": work, "gflop_s": achieved,
            "number_type": NUMBER_TYPE[form], "roof": kind, "roof_gflop_s": roof[kind],
            "pct_of_roof": 100 * achieved / roof[kind], "times": times}


def speedups(rows: list[dict]) -> list[dict]:
    """Per (net, size): the fastest form and its frames/s over PyTorch fp32's, in the same run."""
    out = []
    for key in dict.fromkeys((r["model"], tuple(r["size"])) for r in rows):
        group = [r for r in rows if (r["model"], tuple(r["size"])) == key]
        base = next(r for r in group if r["form"] == "torch fp32")
        best = max(group, key=lambda r: r["fps"])
        out.append({"model": key[0], "size": list(key[1]), "fastest": best["form"],
                    "speedup_over_torch_fp32": best["fps"] / base["fps"]})
    return out


def format_row(r: dict) -> str:
    """A Markdown table row."""
    return (f"| {r['model']} {r['arch']} | {r['size'][0]}x{r['size'][1]} | {r['form']} | {r['ms']:.0f} "
            f"({r['min_ms']:.0f}) | {r['fps']:.2f} | {r['gflop_s']:.0f} | {r['roof']} "
            f"{r['roof_gflop_s']:.0f} | {r['pct_of_roof']:.0f} % |")


TABLE_HEAD = ("| net | input | form | ms median (min) | frames/s | GFLOP/s | roof GFLOP/s | of roof |\n"
              "|---|---|---|---|---|---|---|---|")


def format_table(result: dict) -> str:
    """The whole table in Markdown, with the roofs, the skipped forms and the speed-ups under it."""
    lines = [TABLE_HEAD, *(format_row(r) for r in result["rows"]), ""]
    lines.append(f"roofs: {result['roof_n']}x{result['roof_n']} products timed among the forms, median GFLOP/s "
                 f"({result['threads']} threads):")
    lines += [f"  {r['model']} {r['size'][0]}x{r['size'][1]}: {_join(r['roof'])}" for r in result["roofs"]]
    lines += [f"{form}: {note}" for form, note in result.get("skipped", {}).items()]
    for s in result["speedups"]:
        lines.append(f"{s['model']} at {s['size'][0]}x{s['size'][1]}: fastest {s['fastest']}, "
                     f"{s['speedup_over_torch_fp32']:.2f}x the frames/s of torch fp32")
    return "\n".join(lines)


def run(repeats: int | None = None, quick: bool = False, json_path: str | None = None,
        allow_slow_bf16: bool = False, size: tuple[int, int] | None = None, nets: list[str] | None = None) -> dict:
    """`benchmark.py --deploy`: measure, print the table (and the machine's load), write --json.

    `size` and `nets` ("student", "teacher") narrow the table; `quick` is a smoke run at a tiny size.
    """
    settings = {"sizes": SIZES, "roof_n": ROOF_N, "repeats": repeats or REPEATS, "calib_size": CALIB_SIZE,
                "nets": NETS}
    if quick:
        settings.update(QUICK)
    if size:
        settings["sizes"] = (tuple(size),)
    if nets:
        settings["nets"] = tuple(net for net in NETS if net[0] in nets)
    info = cpu_info()
    forms, skipped = runnable_forms(allow_slow_bf16)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"deploy: batch 1, {settings['repeats']} repeats, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average at start {load}", flush=True)
    print(f"{info.summary()}\n  timing: {', '.join(forms)}; fastest here: {fastest_form(info)}", flush=True)
    for form, note in skipped.items():
        print(f"  {form}: {note}", flush=True)
    print(TABLE_HEAD, flush=True)
    result = measure(settings["sizes"], settings["roof_n"], settings["repeats"], settings["calib_size"],
                     settings["nets"], forms)
    result.update({"cpu": info.to_dict(), "skipped": skipped, "load_average_start": load,
                   "load_average_end": os.getloadavg() if hasattr(os, "getloadavg") else None})
    print()
    print(format_table(result))
    print(f"load average at the end {result['load_average_end']}")
    if json_path:
        write_text_atomic(json_path, json.dumps(result, indent=1) + "\n")
    return result
