"""Speed figures of this implementation beside the original code's way, measured in one run.

    python benchmark.py [--size 512,256] [--batch-size 2] [--repeats 5] [--json OUT] [--quick]
    python benchmark.py --deploy [--repeats 3] [--nets student] [--size 1024,512] [--json OUT] [--quick]
    # only the deployment table (bench/deploy.py)
    python benchmark.py --gpu [--budget 300] [--out runs/gpu_check]      # the GPU check (bench/gpu.py)

Every figure is min / median over `--repeats` timed runs (after one warm-up); a speed-up row gives the
ratio of the medians and, as its min, the most pessimistic ratio (the old way's best run against our
worst). Rows:
training steps (adaptation, distillation) ours vs the old way (the defect reproductions of
bench/oldway.py: teacher in train mode, pseudo labels through NumPy, element-mean KL on log-prob
targets), data-loader throughput per layout, label remapping LUT vs one pass per id (on the whole
file, and as each loader does it per item), the evaluation pipeline ours vs the old two-pass NumPy one,
teacher vs student inference (latency, parameters, GFLOPs, peak memory) and fp32 vs bf16 autocast
(fp16 too on CUDA). Data: the synthetic benchmark, generated into a temporary folder (frames at twice
--size, like Cityscapes' 2048x1024 for a 1024x512 input) unless --data-dir points at one.
"""
from __future__ import annotations

import copy
import json
import statistics
import sys
import tempfile
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.data import DataLoader

from bench.loader import label_work_seconds, loader_throughput, old_label_work, our_label_work
from bench.oldway import OldWayStep, id_table, old_eval_pipeline, old_remap, old_way_objective
from dataset import build_dataset
from dataset.decode import read_label
from model import Discriminator, build_seg_model, count_parameters, fold_batchnorm
from utils.cli import ArgumentParser, check_output, non_negative_int, positive_float, positive_int, run_cli, size_arg
from utils.config import TrainConfig
from utils.cpu import announce, cpu_info, native
from utils.evaluate import eval_collate, evaluate
from utils.files import write_text_atomic
from utils.flops import gflops
from utils.objective import ADAPTATION, PARADIGMS, build_objective, knobs_of
from utils.optim import Optimisers
from utils.runtime import autocast, resolve_device
from utils.steps import TrainStep
from utils.timing import timed

SIZE = (512, 256)            # (w, h) of training and evaluation inputs
BATCH_SIZE = 2
REPEATS = 5
NUM_TRAIN, NUM_VAL = 12, 6   # synthetic frames per domain (train) and for cityscapes/bdd (val)
WARMUP = 1                   # untimed runs before each figure
REMAP_PASSES = 4             # passes over a layout's labels per timed remap figure (one is 12 labels)
QUICK = {"size": (64, 32), "batch_size": 1, "repeats": 1, "warmup": 0, "num_train": 2, "num_val": 2}
STUDENT, TEACHER = "drn_d_22", "drn_d_38"
LAYOUTS = ("gta5", "cityscapes", "bdd")
SEED = 0


class Table:
    """Rows of (name, min, median, unit, note), printed aligned and dumped as JSON."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, name: str, values: Sequence[float] | float, unit: str, note: str = "") -> dict:
        """Add a row from its measured values (one or several); return it."""
        values = [float(values)] if isinstance(values, (int, float)) else [float(v) for v in values]
        return self._append({"name": name, "min": min(values), "median": statistics.median(values), "unit": unit,
                             "note": note, "values": values})

    def add_speedup(self, name: str, slow: dict, fast: dict, note: str = "") -> dict:
        """A speed-up row of `fast` over `slow` (both seconds or both rates): its median is the ratio of
        their medians, its min the most pessimistic ratio (the old way's best repeat against our worst)."""
        if slow["unit"].startswith("s/"):  # seconds per item: smaller is faster
            pessimistic, median = min(slow["values"]) / max(fast["values"]), slow["median"] / fast["median"]
        else:  # items per second
            pessimistic, median = min(fast["values"]) / max(slow["values"]), fast["median"] / slow["median"]
        return self._append({"name": name, "min": pessimistic, "median": median, "unit": "x", "note": note,
                             "values": [pessimistic, median]})

    def _append(self, row: dict) -> dict:
        self.rows.append(row)
        print(f"{row['name']:42s} {row['min']:10.4g} {row['median']:10.4g}  {row['unit']:10s} {row['note']}",
              flush=True)
        return row


# --- data ------------------------------------------------------------------------------------------
def make_data(out: Path, size: tuple[int, int], num_train: int, num_val: int) -> Path:
    """Generate the synthetic benchmark with frames at twice `size`; return its root."""
    from dataset.synthetic import generate

    generate(out, num_train, num_val, (size[0] * 2, size[1] * 2), SEED, list(LAYOUTS))
    return out


def batches(root: Path, name: str, size, batch_size: int, count: int, labels: bool) -> list[dict]:
    """`count` ready batches of a layout (loaded once, so step timings exclude loading)."""
    split = "train"
    dataset = build_dataset(name, root / name, split, size=size, labels=labels)
    out = []
    for b in range(count):
        items = [dataset[(b * batch_size + i) % len(dataset)] for i in range(batch_size)]
        batch = {"image": torch.stack([it["image"] for it in items])}
        if labels:
            batch["label"] = torch.stack([it["label"] for it in items])
        out.append(batch)
    return out


# --- training steps --------------------------------------------------------------------------------
def make_step(cls, device, distill: bool, amp: str = "off", channels_last: bool = False):
    """A fresh student, D1, D2 (and teacher) with their optimizers inside a step of class `cls`."""
    torch.manual_seed(SEED)
    net = build_seg_model(STUDENT).to(device)
    discs = (Discriminator().to(device), Discriminator().to(device))
    teacher = build_seg_model(TEACHER).to(device) if distill else None
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        teacher = teacher.to(memory_format=torch.channels_last) if teacher is not None else None
    cfg = TrainConfig(amp=amp)  # the scripts' optimiser settings and loss weights
    optimisers = Optimisers(net, discs, cfg, device.type)
    spec = PARADIGMS["both"][0] if distill else ADAPTATION[0]
    build = old_way_objective if cls is OldWayStep else build_objective
    objective = build(spec, knobs_of(cfg))
    optimisers.start_phase(cfg.num_steps, objective.adversarial_levels)
    step = cls(net, discs, objective, device, amp=amp, teacher=teacher, channels_last=channels_last,
               scale=optimisers.scale)
    return step, optimisers


def step_times(made, sources, targets, repeats: int, warmup: int = 1) -> list[float]:
    """Seconds per full optimisation step (forward, backward, optimizer steps) of a `make_step` pair."""
    step, optimisers = made
    state = {"i": 0}

    def one() -> None:
        i = state["i"] % len(sources)
        state["i"] += 1
        optimisers.zero_grad()
        losses = step([sources[i]], [targets[i]])
        optimisers.step()
        # the old way logs every term through the host every step; ours checks finiteness once
        if isinstance(step, OldWayStep):
            [float(v) for v in losses.values()]
        else:
            torch.isfinite(torch.stack([v.reshape(()) for v in losses.values()])).all().item()

    return timed(one, repeats, warmup)


def bench_steps(table: Table, args, device, sources, targets) -> None:
    """Adaptation and distillation step time, ours vs the old way, and ours with bf16 autocast."""
    rows = {}
    for kind, distill in (("adapt", False), ("distill", True)):
        for way, cls in (("ours", TrainStep), ("old way", OldWayStep)):
            made = make_step(cls, device, distill)
            times = step_times(made, sources, targets, args.repeats, args.warmup)
            note = f"batch {args.batch_size} at {args.size[0]}x{args.size[1]}"
            rows[kind, way] = table.add(f"{kind} step ({way})", times, "s/step", note)
            del made
        table.add_speedup(f"{kind} step speed-up", rows[kind, "old way"], rows[kind, "ours"], "old way / ours")
    for amp in amp_modes(device, args.allow_slow_bf16)[1:]:
        made = make_step(TrainStep, device, True, amp=amp)
        row = table.add(f"distill step (ours, {amp} autocast)",
                        step_times(made, sources, targets, args.repeats, args.warmup), "s/step")
        table.add_speedup(f"distill step speed-up ({amp} autocast)", rows["distill", "old way"], row,
                          "old way (fp32) / ours with --amp " + amp)
    made = make_step(TrainStep, device, True, channels_last=True)
    times = step_times(made, sources, targets, args.repeats, args.warmup)
    table.add("distill step (ours, channels_last)", times, "s/step")


# --- data loading ----------------------------------------------------------------------------------
def remap_rates(dataset, work: Callable[[torch.Tensor, torch.Tensor], object], args,
                size: tuple[int, int] | None = None) -> list[float]:
    """Labels/s of `work(raw, resized)` (see `label_work_seconds`) over the dataset; one per repeat."""
    n = len(dataset)
    for _ in range(args.warmup):
        label_work_seconds(dataset, n, work, size)
    return [n * REMAP_PASSES / sum(label_work_seconds(dataset, n, work, size) for _ in range(REMAP_PASSES))
            for _ in range(args.repeats)]


def bench_loading(table: Table, args, root: Path) -> None:
    """Loader images/s per layout; label remapping ours vs the old way's, on the whole file (the same
    work on both sides) and as each loader does it for an item (ours: id check on the file, lookup on
    the resized label; the old loaders: resize, then one pass per id)."""
    item_size = f"{args.size[0]}x{args.size[1]}"
    for name in LAYOUTS:
        dataset = build_dataset(name, root / name, "train", size=args.size)
        rates = [loader_throughput(dataset, len(dataset), 0) for _ in range(args.repeats)]
        table.add(f"loader {name}", rates, "images/s", "decode + resize + LUT, 0 workers")
        ids, lut = id_table(dataset.layout.lut), dataset.label_lut
        h, w = read_label(dataset.label_path(0)).shape

        def ours_whole(raw, _resized, lut=lut):
            return lut(raw, inplace=True)

        def old_whole(raw, _resized, ids=ids):
            return old_remap(raw.numpy(), ids)

        note = f"{w}x{h} file, timed right after decoding"
        fast = table.add(f"label remap {name} (LUT)", remap_rates(dataset, ours_whole, args), "labels/s", note)
        slow = table.add(f"label remap {name} (old per-id)", remap_rates(dataset, old_whole, args),
                         "labels/s", note)
        table.add_speedup(f"label remap {name} speed-up", slow, fast)
        fast = table.add(f"label work per item {name} (ours)",
                         remap_rates(dataset, our_label_work(dataset), args, args.size), "labels/s",
                         f"id check on the {w}x{h} file, LUT at {item_size}")
        slow = table.add(f"label work per item {name} (old way)",
                         remap_rates(dataset, old_label_work(dataset), args, args.size), "labels/s",
                         f"per-id loop at {item_size}, after the resize")
        table.add_speedup(f"label work per item {name} speed-up", slow, fast)


# --- evaluation ------------------------------------------------------------------------------------
def bench_eval(table: Table, args, root: Path, device) -> None:
    """Images/s of the whole evaluation (loading, forward, metrics), ours vs the old pipeline."""
    dataset = build_dataset("cityscapes", root / "cityscapes", "val", size=args.size, label_size="full")
    torch.manual_seed(SEED)
    net = build_seg_model(STUDENT).to(device).eval()
    slow_times = timed(lambda: old_eval_pipeline(net, dataset, len(dataset)), args.repeats, args.warmup)
    slow = table.add("eval pipeline (old way)", [len(dataset) / t for t in slow_times], "images/s",
                     "NumPy arg-max, PNGs, per-id remap, fast_hist")
    # (autocast, channels_last, folded batch norm): plain, each low precision with and without
    # channels_last, and the fastest combinations with the batch norms folded into the convolutions.
    low = amp_modes(device, args.allow_slow_bf16)[1:]
    variants = ([("off", False, False)] + [(amp, cl, False) for amp in low for cl in (False, True)]
                + [("off", False, True)] + [(amp, True, True) for amp in low])
    for amp, channels_last, fold_bn in variants:
        model = fold_batchnorm(net) if fold_bn else net
        if channels_last:
            model = copy.deepcopy(model).to(memory_format=torch.channels_last)

        def ours(model=model, amp=amp, channels_last=channels_last) -> None:
            loader = DataLoader(dataset, batch_size=1, collate_fn=eval_collate, num_workers=0)
            evaluate(model, loader, device, progress=False, amp=amp, channels_last=channels_last)

        fast_times = timed(ours, args.repeats, args.warmup)
        options = ([f"{amp} autocast"] if amp != "off" else []) + (["channels_last"] if channels_last else []) \
            + (["folded BN"] if fold_bn else [])
        suffix = f" ({', '.join(options)})" if options else ""
        fast = table.add(f"eval pipeline (ours){suffix}", [len(dataset) / t for t in fast_times], "images/s",
                         f"{len(dataset)} images, labels at full size")
        table.add_speedup(f"eval pipeline speed-up{suffix}", slow, fast)


# --- inference -------------------------------------------------------------------------------------
def amp_modes(device: torch.device, allow_slow_bf16: bool = False) -> list[str]:
    """Precisions worth measuring on `device`: on a CPU, bf16 only where it is native (or allowed anyway)."""
    if device.type == "cuda":
        return ["off", "bf16", "fp16"]
    return ["off", "bf16"] if allow_slow_bf16 or native(cpu_info(), "bf16") else ["off"]


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of live tensors created under this mode (activations; weights and inputs excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._owners: dict[int, int] = {}

    def _free(self, ptr: int) -> None:
        self.live -= self._owners.pop(ptr, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                ptr = t.untyped_storage().data_ptr()
                if ptr and ptr not in self._owners:  # a view of a counted storage adds nothing
                    self._owners[ptr] = t.untyped_storage().nbytes()
                    self.live += self._owners[ptr]
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._free, ptr)
        return out


def peak_memory_mb(net, x: torch.Tensor, device: torch.device) -> tuple[float, str]:
    """Peak memory one inference adds over the resident weights and input (CUDA: allocator peak)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.inference_mode():
            net(x)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20, "CUDA allocator peak over weights"
    with torch.inference_mode(), LiveTensorBytes() as mode:
        net(x)
    return mode.peak / 2**20, "peak live tensor bytes (activations)"


def bench_inference(table: Table, args, device) -> None:
    """Teacher vs student: latency, parameters, GFLOPs, peak memory; fp32 vs reduced precision."""
    w, h = args.size
    x = torch.randn(args.batch_size, 3, h, w, device=device)
    for role, arch in (("student", STUDENT), ("teacher", TEACHER)):
        torch.manual_seed(SEED)
        net = build_seg_model(arch).to(device).eval()
        work = gflops(net, (w, h))
        for amp in amp_modes(device, args.allow_slow_bf16):
            def infer(net=net, amp=amp) -> None:
                with torch.inference_mode(), autocast(device, amp):
                    net(x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)

            label = "fp32" if amp == "off" else f"{amp} autocast"
            table.add(f"infer {role} {arch} ({label})", timed(infer, args.repeats, args.warmup), "s/batch",
                      f"batch {args.batch_size} at {w}x{h}")
        table.add(f"params {role} {arch}", count_parameters(net) / 1e6, "M")
        table.add(f"GFLOPs {role} {arch}", work, "GFLOP", f"one {w}x{h} image (FlopCounterMode)")
        mb, how = peak_memory_mb(net, x, device)
        table.add(f"peak memory {role} {arch}", mb, "MB", f"{how}, batch {args.batch_size}")


# --- command line ----------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None):
    """Flags over the constants above; --quick shrinks everything to a smoke run."""
    parser = ArgumentParser(prog="benchmark.py", description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=size_arg, default=None,
                        help="input W,H (default 512,256; with --deploy: only this size, default 1024,512 and "
                             "2048,1024)")
    parser.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE)
    parser.add_argument("--repeats", type=positive_int, default=None,
                        help=f"timed runs per figure (default {REPEATS}; --deploy: 3)")
    parser.add_argument("--data-dir", help="a synthetic benchmark root (gta5/, cityscapes/, bdd/); "
                                           "default: generate one in a temporary folder")
    parser.add_argument("--warmup", type=non_negative_int, default=None,
                        help=f"untimed runs per figure (default {WARMUP}; --gpu: 2)")
    parser.add_argument("--num-train", type=non_negative_int, default=NUM_TRAIN)
    parser.add_argument("--num-val", type=non_negative_int, default=NUM_VAL)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default cpu; --gpu: cuda)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--quick", action="store_true", help="tiny size, one repeat: a smoke run")
    parser.add_argument("--allow-slow-bf16", action="store_true",
                        help="also time bf16 on a CPU without native bf16 (emulated: up to hundreds of times slower)")
    parser.add_argument("--deploy", action="store_true",
                        help="only the deployment table: student and teacher in every inference form (PyTorch "
                             "fp32, bf16, onnxruntime fp32 and int8) beside the machine's roof (bench/deploy.py)")
    parser.add_argument("--gpu", action="store_true",
                        help="the GPU check: each training script's step at the paper's sizes in fp32/bf16/fp16, "
                             "memory and the batch per card, --compile, eval_cs.py, determinism, the gpu tests "
                             "(bench/gpu.py; docs/scaling.md#gpu-check)")
    parser.add_argument("--budget", type=positive_float, default=None,
                        help="--gpu: seconds the measurements may take; later sections are cut, never overrun "
                             "(default 300; --quick: 900)")
    parser.add_argument("--out", default="runs/gpu_check", help="--gpu: folder of gpu_check.json and gpu_check.md")
    parser.add_argument("--sections", default=None,
                        help="--gpu: comma-separated subset of steps,memory,eval,deterministic,tests,compile")
    parser.add_argument("--scripts", default=None,
                        help="--gpu: comma-separated subset of teacher,student,dakd,deeplab "
                             "(default: all; --quick: dakd)")
    parser.add_argument("--nets", nargs="+", choices=("student", "teacher"), default=None,
                        help="--deploy: only these nets (default both)")
    args = parser.parse_args(argv)
    if args.nets and not args.deploy:
        parser.error("--nets selects the nets of --deploy; add --deploy")
    if args.gpu:
        return args
    args.device = args.device or "cpu"
    args.warmup = WARMUP if args.warmup is None else args.warmup
    if not args.deploy:
        args.repeats = args.repeats or REPEATS
        args.size = args.size or SIZE
    if args.quick and not args.deploy:
        for key, value in QUICK.items():
            setattr(args, key, value)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Measure everything and print the table (and write --json)."""
    args = parse_args(argv)
    if args.gpu:
        from bench.gpu import run

        run(args.device or "cuda", args.quick, args.budget, args.out, args.sections, args.repeats, args.warmup,
            args.scripts)
        return 0
    if args.json:
        check_output(args.json, "--json")  # before minutes of measurement, not after
    if args.deploy:
        from bench.deploy import run

        run(args.repeats, args.quick, args.json, args.allow_slow_bf16, args.size, args.nets)
        return 0
    device = resolve_device(args.device)
    torch.manual_seed(SEED)
    print(f"benchmark: {args.size[0]}x{args.size[1]}, batch {args.batch_size}, {args.repeats} repeats, "
          f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    kept = amp_modes(device, args.allow_slow_bf16)
    announce(device, "torch " + ", ".join("fp32" if amp == "off" else f"{amp} autocast" for amp in kept)
             + ("" if "bf16" in kept else " (bf16 rows skipped: not native here; --allow-slow-bf16 times them)"))
    print(f"{'row':42s} {'min':>10s} {'median':>10s}  unit")
    table = Table()
    with tempfile.TemporaryDirectory() as tmp:
        if args.data_dir:
            root = Path(args.data_dir)
        else:
            root = make_data(Path(tmp) / "synthetic", args.size, max(args.num_train, 2), max(args.num_val, 1))
        count = 2
        sources = batches(root, "gta5", args.size, args.batch_size, count, labels=True)
        targets = batches(root, "cityscapes", args.size, args.batch_size, count, labels=False)
        bench_steps(table, args, device, sources, targets)
        bench_loading(table, args, root)
        bench_eval(table, args, root, device)
        bench_inference(table, args, device)
    if args.json:
        info = {"size": list(args.size), "batch_size": args.batch_size, "repeats": args.repeats,
                "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                "cpu": cpu_info().to_dict()}
        write_text_atomic(args.json, json.dumps({"config": info, "rows": table.rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
