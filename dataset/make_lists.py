"""Write a list file of one dataset split: image paths relative to the root, sorted, one per line.

    python -m dataset.make_lists --dataset cityscapes --root data/cityscapes --split val --out val.txt
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from dataset.base import scan_split
from dataset.layouts import LAYOUTS
from utils.cli import ArgumentParser, check_output, run_cli
from utils.errors import DatasetError


def make_list(dataset: str, root: str | Path, split: str, out: str | Path, *, check_labels: bool = False) -> int:
    """Write the list of `split` of `dataset` under `root` to `out`; returns the number of lines.

    With `check_labels`, every image must have its label file (else `DatasetError`).
    """
    layout = LAYOUTS[dataset]
    files = scan_split(layout, root, split)
    if check_labels:
        missing = [layout.label_rel(f) for f in files if not (Path(root) / layout.label_rel(f)).is_file()]
        if missing:
            raise DatasetError(f"{len(missing)} of {len(files)} {dataset} labels are missing under {root} "
                               f"(expected {layout.description}); first: {', '.join(missing[:3])}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"{f}\n" for f in files))
    return len(files)


def main(argv: Sequence[str] | None = None) -> None:
    """Command line of `make_list`."""
    parser = ArgumentParser(prog="python -m dataset.make_lists", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(LAYOUTS))
    parser.add_argument("--root", required=True, help="dataset root folder")
    parser.add_argument("--split", default="train", help="split folder (train, val, test; GTA5 has none)")
    parser.add_argument("--out", required=True, help="list file to write")
    parser.add_argument("--check-labels", action="store_true", help="fail if an image has no label file")
    args = parser.parse_args(argv)
    check_output(args.out, "--out")
    count = make_list(args.dataset, args.root, args.split, args.out, check_labels=args.check_labels)
    print(f"wrote {count} {args.dataset} {args.split} images to {args.out}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
