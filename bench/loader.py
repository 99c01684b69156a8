"""Loader throughput: images/s per worker for each layout, and our label work vs the original per-id remap.

    python -m bench.loader --root DIR [--size 128,64] [--num 200] [--workers 1]

DIR holds gta5/, cityscapes/ and bdd/ (the synthetic benchmark's output); `--gta5`, `--cityscapes`,
`--bdd` point at single dataset roots instead (real downloads).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bench.oldway import id_table, old_remap
from dataset import build_dataset
from dataset.decode import LABEL_READERS
from dataset.layouts import LAYOUTS
from dataset.lut import undefined_ids
from dataset.transforms import resize_label
from utils.cli import ArgumentParser, non_negative_int, positive_int, run_cli, size_arg
from utils.errors import DatasetError

SPLITS = {"gta5": "train", "cityscapes": "train", "bdd": "train", "synthia": "train"}


def loader_throughput(dataset, num: int, workers: int, batch_size: int = 1) -> float:
    """Images/s of a DataLoader over the first `num` items (after one warm-up batch)."""
    subset = torch.utils.data.Subset(dataset, list(range(min(num, len(dataset)))))
    loader = DataLoader(subset, batch_size=batch_size, num_workers=workers, shuffle=False)
    start, seen = None, 0
    for batch in loader:
        if start is None:  # skip worker start-up
            start = time.perf_counter()
            continue
        seen += batch["image"].shape[0]
    seconds = time.perf_counter() - start if start is not None else 0.0
    return seen / seconds if seconds > 0 else float("nan")


def label_work_seconds(dataset, num: int, work: Callable[[torch.Tensor, torch.Tensor], object],
                       size: tuple[int, int] | None = None) -> float:
    """Seconds spent in `work(raw, resized)` over the first `num` labels, each timed right after its
    decoding (as in the loader, where the label is still in cache): `raw` as decoded, `resized` the same
    label resized to `size` (W, H) for an item (untimed), or `raw` itself without `size`."""
    total = 0.0
    for i in range(min(num, len(dataset))):
        raw = LABEL_READERS[dataset.layout.label_reader](dataset.label_path(i))
        resized = raw if size is None else resize_label(raw, (size[1], size[0])).contiguous()
        start = time.perf_counter()
        work(raw, resized)
        total += time.perf_counter() - start
    return total


def our_label_work(dataset) -> Callable[[torch.Tensor, torch.Tensor], object]:
    """What our loader does to a label besides decoding and resizing: check the file's ids, then look up
    the train ids of the pixels the item keeps."""
    def work(raw: torch.Tensor, resized: torch.Tensor) -> torch.Tensor:
        undefined_ids(raw, dataset.layout.max_id)
        return dataset.label_lut(resized, inplace=True)
    return work


def old_label_work(dataset) -> Callable[[torch.Tensor, torch.Tensor], object]:
    """What the old loaders did to a label besides decoding and resizing: one pass per id over the
    resized label (they resized first), on float32 copies."""
    ids = id_table(dataset.layout.lut)
    return lambda raw, resized: old_remap(resized.numpy(), ids)


def remap_speed(dataset, num: int, size: tuple[int, int]) -> tuple[float, float]:
    """Labels/s of our label work and of the original code's, as their loaders do it for items of `size`."""
    count = min(num, len(dataset))
    ours = label_work_seconds(dataset, num, our_label_work(dataset), size)
    old = label_work_seconds(dataset, num, old_label_work(dataset), size)
    return count / max(ours, 1e-9), count / max(old, 1e-9)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: print throughput for every layout found."""
    parser = ArgumentParser(prog="python -m bench.loader", description=__doc__.split("\n")[0])
    parser.add_argument("--root", help="folder holding gta5/, cityscapes/, bdd/")
    for name in LAYOUTS:
        parser.add_argument(f"--{name}", help=f"root of a {name} dataset (overrides --root)")
    parser.add_argument("--size", type=size_arg, default=(128, 64), help="resize to W,H (default 128,64)")
    parser.add_argument("--num", type=positive_int, default=200, help="images per measurement")
    parser.add_argument("--workers", type=non_negative_int, default=1,
                        help="DataLoader workers (default 1; 0 = main process, slower on small CPUs)")
    args = parser.parse_args(argv)
    roots = {}
    for name in LAYOUTS:
        root = getattr(args, name) or (Path(args.root) / name if args.root else None)
        if root is not None and Path(root).is_dir():
            roots[name] = Path(root)
    if not roots:
        raise DatasetError("no dataset found: give --root DIR (with gta5/, cityscapes/, bdd/) or --gta5/...")
    per = max(args.workers, 1)
    print(f"size {args.size[0]}x{args.size[1]}, {args.num} images, workers={args.workers}, "
          f"torch threads={torch.get_num_threads()}")
    for name, root in roots.items():
        dataset = build_dataset(name, root, SPLITS[name], size=args.size, random_mirror=True, random_scale=True)
        rate = loader_throughput(dataset, args.num, args.workers)
        ours, old = remap_speed(dataset, args.num, args.size)
        print(f"{name:10s} {rate:8.1f} images/s ({rate / per:.1f} per worker); label remap: "
              f"ours (id check + LUT) {ours:.0f} labels/s, old per-id loop {old:.0f} labels/s")


if __name__ == "__main__":
    sys.exit(run_cli(main))
