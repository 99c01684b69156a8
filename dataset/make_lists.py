"""Write a list file of one dataset split: image paths relative to the root, sorted, one per line.

    python -m dataset.make_lists --dataset cityscapes --root data/cityscapes --split val --out val.txt
    python -m dataset.make_lists --dataset gta5 --root data/gta5 --split-mat data/gta5/split.mat \
        --split train --out gta5_train.txt

GTA5 has no split folders; its download's `split.mat` holds the official frame ids of each split
(variables `trainIds`, `valIds`, `testIds`), read with SciPy. Ids whose image or label is missing
from the copy (some copies lack 25 pairs) are left out of the list, said once.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from dataset.base import scan_split
from dataset.layouts import GTA5, LAYOUTS
from dataset.quirks import first_names
from utils.cli import ArgumentParser, check_output, run_cli
from utils.errors import DatasetError
from utils.files import write_text_atomic


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
    write_text_atomic(out, "".join(f"{f}\n" for f in files))
    return len(files)


SPLIT_MAT_SPLITS = ("train", "val", "test")


def split_mat_ids(split_mat: str | Path, split: str) -> list[int]:
    """The frame ids of `split` in GTA5's `split.mat` (variable `<split>Ids`), in file order."""
    import scipy.io

    path = Path(split_mat)
    if not path.is_file():
        raise DatasetError(f"--split-mat {path}: no such file (expected GTA5's split.mat)")
    try:
        data = scipy.io.loadmat(str(path))
    except Exception as err:  # noqa: BLE001 - SciPy's parser fails on a foreign file in many ways
        raise DatasetError(f"--split-mat {path}: not a readable MATLAB file "
                           f"({type(err).__name__}: {str(err).strip()[:80]})") from err
    key = f"{split}Ids"
    if key not in data:
        found = sorted(k for k in data if not k.startswith("__"))
        raise DatasetError(f"--split-mat {path}: no variable {key!r} (found {', '.join(found) or 'none'}; "
                           f"expected trainIds, valIds, testIds)")
    ids = data[key]
    if ids.dtype.kind not in "iuf" or ids.size == 0:
        raise DatasetError(f"--split-mat {path}: {key} holds no frame ids")
    return [int(i) for i in ids.reshape(-1)]


def make_list_from_split_mat(root: str | Path, split_mat: str | Path, split: str, out: str | Path
                             ) -> tuple[int, list[str]]:
    """Write GTA5's official `split` from `split_mat` to `out`; returns (lines written, ids left out
    because their image or label is missing under `root`)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"gta5 dataset root {root} does not exist (expected {GTA5.description})")
    entries = [f"{GTA5.split_dir(split)}/{i:05d}{GTA5.image_suffix}" for i in split_mat_ids(split_mat, split)]
    kept = [e for e in entries if (root / e).is_file() and (root / GTA5.label_rel(e)).is_file()]
    if not kept:
        raise DatasetError(f"--split-mat {split_mat}: none of the {len(entries)} {split} frames is under {root} "
                           f"(expected {GTA5.description})")
    write_text_atomic(out, "".join(f"{e}\n" for e in kept))
    gone = set(kept)
    return len(kept), [e for e in entries if e not in gone]


def main(argv: Sequence[str] | None = None) -> None:
    """Command line of `make_list`."""
    parser = ArgumentParser(prog="python -m dataset.make_lists", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(LAYOUTS))
    parser.add_argument("--root", required=True, help="dataset root folder")
    parser.add_argument("--split", default="train", help="split folder (train, val, test; GTA5 has none)")
    parser.add_argument("--out", required=True, help="list file to write")
    parser.add_argument("--check-labels", action="store_true", help="fail if an image has no label file")
    parser.add_argument("--split-mat", help="GTA5: the download's split.mat; --split then picks train, val or test")
    args = parser.parse_args(argv)
    check_output(args.out, "--out")
    if args.split_mat:
        if args.dataset != "gta5":
            parser.error(f"--split-mat is GTA5's split file; --dataset {args.dataset} has split folders")
        if args.split not in SPLIT_MAT_SPLITS:
            parser.error(f"--split {args.split}: split.mat holds {', '.join(SPLIT_MAT_SPLITS)}")
        count, missing = make_list_from_split_mat(args.root, args.split_mat, args.split, args.out)
        if missing:
            print(f"warning: {len(missing)} {args.split} frames of {args.split_mat} have no image or label "
                  f"under {args.root} and are left out (first: {first_names(missing)})", file=sys.stderr)
        print(f"wrote {count} gta5 {args.split} images to {args.out}")
        return
    count = make_list(args.dataset, args.root, args.split, args.out, check_labels=args.check_labels)
    print(f"wrote {count} {args.dataset} {args.split} images to {args.out}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
