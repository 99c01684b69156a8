"""Cost of a validation's selection passes against one val pass (docs/selection.md), measured in one process.

    python -m bench.selection [--data-dir DIR] [--size 64,32] [--num-val 50] [--signal-images 50]
                              [--holdout 20] [--batch-size 4] [--repeats 5] [--threads 1] [--json OUT]

Passes, each the median of `--repeats` timed runs after one warm-up: the target val pass that
`--eval-every` runs today (`utils.evaluate.evaluate`, student DRN-D-22, labels at full size); the
signals on `--signal-images` target train images (`utils.signals.compute_signals`), without and with a
DRN-D-38 teacher; the source hold-out mIoU on `--holdout` GTA5 frames (`utils.signals.source_miou`).
Also the share of the signal pass spent in the signals' own arithmetic (`SignalAccumulator.seconds`).
Weights are random: the cost does not depend on them. Data: the synthetic benchmark at `--size`
(the demo's 64x32 by default), generated into a temporary folder unless `--data-dir` holds one.
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from dataset import build_dataset
from dataset.holdout import holdout_datasets, target_signal_dataset
from model import build_seg_model
from utils.cli import ArgumentParser, positive_int, run_cli, size_arg
from utils.evaluate import eval_collate, evaluate
from utils.signals import SignalAccumulator, compute_signals, source_miou


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _arithmetic_seconds(net, loader, repeats: int) -> float:
    """Median seconds of the SignalAccumulator alone over the pass's outputs (forwards done beforehand)."""
    with torch.no_grad():
        outputs = [net.eval()(batch["image"]) for batch in loader]

    def feed():
        acc = SignalAccumulator()
        for aux, main in outputs:
            acc.update(aux, main)
        acc.result()

    return _median_seconds(feed, repeats)


def measure(root: Path, size: tuple[int, int], num_signal: int, holdout: int, batch_size: int,
            repeats: int) -> list[dict]:
    """One row per pass: name, images, median seconds, ms per image, and the ratio to the val pass."""
    def loader(ds):
        return DataLoader(ds, batch_size=batch_size, collate_fn=eval_collate, num_workers=0)

    val = build_dataset("cityscapes", root / "cityscapes", "val", size=size, labels=True, label_size="full")
    target = build_dataset("cityscapes", root / "cityscapes", "train", size=size, labels=False)
    signal_set = target_signal_dataset(target, num_signal, size=size)
    source = build_dataset("gta5", root / "gta5", "train", size=size, labels=True, random_mirror=True)
    _, held = holdout_datasets(source, holdout, size=size)
    torch.manual_seed(0)
    student, teacher = build_seg_model("drn_d_22").eval(), build_seg_model("drn_d_38").eval()
    passes = [
        ("val pass (today's --eval-every)", len(val),
         lambda: evaluate(student, loader(val), "cpu", progress=False, label_size="full")),
        ("signals, student", len(signal_set), lambda: compute_signals(student, loader(signal_set), "cpu")),
        ("signals + teacher agreement", len(signal_set),
         lambda: compute_signals(student, loader(signal_set), "cpu", teacher)),
        ("source hold-out mIoU", len(held), lambda: source_miou(student, loader(held), "cpu")),
    ]
    rows = [{"pass": name, "images": n, "seconds": _median_seconds(fn, repeats)} for name, n, fn in passes]
    rows.append({"pass": "signal arithmetic alone (in 'signals, student')", "images": len(signal_set),
                 "seconds": _arithmetic_seconds(student, loader(signal_set), repeats)})
    base = rows[0]["seconds"]
    for row in rows:
        row["ms_per_image"] = 1e3 * row["seconds"] / row["images"]
        row["x_val_pass"] = row["seconds"] / base
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Command line: print the cost table (and write it as JSON with --json)."""
    parser = ArgumentParser(prog="python -m bench.selection", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="a synthetic benchmark (gta5/, cityscapes/); default: "
                                                         "generated into a temporary folder")
    parser.add_argument("--size", type=size_arg, default=(64, 32), help="frame and input size W,H")
    parser.add_argument("--num-train", type=positive_int, default=200, help="frames generated per domain")
    parser.add_argument("--num-val", type=positive_int, default=50, help="val frames generated")
    parser.add_argument("--signal-images", type=positive_int, default=50, help="target train images for the signals")
    parser.add_argument("--holdout", type=positive_int, default=20, help="source frames held out")
    parser.add_argument("--batch-size", type=positive_int, default=4)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads")
    parser.add_argument("--json", default=None, help="write the rows as JSON")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data_dir) if args.data_dir else Path(tmp)
        if not args.data_dir:
            from dataset.synthetic import generate

            generate(root, num_train=args.num_train, num_val=args.num_val, size=args.size, seed=0,
                     domains=("gta5", "cityscapes"))
        rows = measure(root, args.size, args.signal_images, args.holdout, args.batch_size, args.repeats)
    w, h = args.size
    print(f"selection passes at {w}x{h}, batch {args.batch_size}, {args.threads} thread(s), CPU, "
          f"median of {args.repeats}:")
    print(f"{'pass':<50}{'images':>7}{'seconds':>9}{'ms/image':>10}{'x val':>7}")
    for row in rows:
        print(f"{row['pass']:<50}{row['images']:>7}{row['seconds']:>9.3f}{row['ms_per_image']:>10.2f}"
              f"{row['x_val_pass']:>7.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    sys.exit(run_cli(main))
