"""Dataset doctor: what a GTA5, Cityscapes, BDD100K or SYNTHIA folder holds and what the loaders will do with it.

    python -m dataset.check --dataset gta5 --root data/gta5 [--full]

Reads every image's and label's header (the size, without decoding) on a pool of threads, or with
`--full` decodes every file as the loaders do and checks the labels' ids. Reports, per split: counts,
image sizes, pairs whose sizes differ (and by how much), images without label, labels without image,
unreadable files (and with `--full`: labels holding undefined ids, blank images), each with what the
loaders do about it. Exit status 0 when the loaders can train on the folder, 2 (with the reason in one
line) when not.
"""
from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dataset.decode import LABEL_READERS, read_image
from dataset.layouts import LAYOUTS, Layout, resolve_layout
from dataset.lut import undefined_ids
from dataset.quirks import HEADER_THREADS, describe_gap, header_size, parallel_map, size_gap
from utils.cli import ArgumentParser, positive_int, run_cli
from utils.errors import DatasetError

SHOW = 5  # names listed per finding
UNLABELLED_SPLITS = ("test",)  # splits whose labels are not published (BDD100K) or are placeholders


@dataclass
class Pair:
    """What one image and its label hold, as far as the check read them."""

    image: str
    label: str
    has_label: bool
    image_size: tuple[int, int] | None = None
    label_size: tuple[int, int] | None = None  # None: no label file
    errors: list[str] = field(default_factory=list)  # unreadable files
    undefined: list[int] = field(default_factory=list)  # --full: label ids outside the table
    blank: bool = False  # --full: the image holds a single colour


@dataclass
class SplitReport:
    """Findings of one split; `blocking` says why the loaders cannot use it (empty: they can)."""

    name: str
    pairs: list[Pair]
    orphans: list[str]  # labels without image
    labelled: bool
    lines: list[str] = field(default_factory=list)
    blocking: list[str] = field(default_factory=list)


def _splits(layout: Layout, root: Path) -> list[str]:
    if not layout.has_splits:
        return ["train"]  # GTA5: one folder, the list (or split.mat) picks the split
    parent = root / layout.image_dir.split("/{split}")[0]
    return sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []


def _label_files(layout: Layout, root: Path, split: str) -> list[str]:
    folder = root / layout.label_dir.format(split=split)
    pattern = f"**/*{layout.label_suffix}" if layout.recursive else f"*{layout.label_suffix}"
    return sorted(p.relative_to(root).as_posix() for p in folder.glob(pattern) if p.is_file())


def _inspect(pair: Pair, root: Path, layout: Layout, full: bool) -> Pair:
    for rel, what in ((pair.image, "image"), (pair.label, "label")):
        if what == "label" and not pair.has_label:
            continue
        try:
            if full:
                data = read_image(root / rel) if what == "image" else LABEL_READERS[layout.label_reader](root / rel)
                size = (int(data.shape[-1]), int(data.shape[-2]))
                if what == "image":
                    pair.blank = bool(data.min() == data.max())
                else:
                    pair.undefined = undefined_ids(data, layout.max_id)
            else:
                size = header_size(root / rel, what)
        except DatasetError as err:
            pair.errors.append(str(err))
            continue
        if what == "image":
            pair.image_size = size
        else:
            pair.label_size = size
    return pair


def _names(items: Sequence[str]) -> str:
    return ", ".join(items[:SHOW]) + (f", ... ({len(items) - SHOW} more)" if len(items) > SHOW else "")


def _judge(report: SplitReport, layout: Layout, full: bool) -> None:
    """Fill `report.lines` (findings, each with the loaders' action) and `report.blocking`."""
    pairs, out, tol = report.pairs, report.lines, layout.size_tolerance
    where = f" {report.name}" if layout.has_splits else ""
    labels = [p for p in pairs if p.has_label]
    out.append(f"split {report.name}: {len(pairs)} images, {len(labels) + len(report.orphans)} labels, "
               f"{len(labels)} pairs")
    sizes = Counter(p.image_size for p in pairs if p.image_size)
    out.append("  image sizes: " + ", ".join(f"{w}x{h}: {n}" for (w, h), n in sizes.most_common()))
    off = [p for p in pairs if p.image_size and p.label_size and p.image_size != p.label_size]
    ok = [p for p in off if size_gap(p.image_size, p.label_size) <= tol]
    bad = [p for p in off if size_gap(p.image_size, p.label_size) > tol]
    if ok:
        out.append(f"  {len(ok)} pairs differ in size by at most {100 * tol:g} % a side -> resized to the input "
                   "size each on its own (the label nearest), said once:")
        out += [f"    {p.image}: {describe_gap(p.image_size, p.label_size)}" for p in ok[:SHOW]]
    if bad:
        limit = f"more than {100 * tol:g} %" if tol else "any amount (this layout's pairs must match)"
        out.append(f"  {len(bad)} pairs differ in size by {limit} -> REFUSED (another aspect ratio or a wrong "
                   "file; fix it or leave the frame out with --exclude):")
        out += [f"    {p.image}: {describe_gap(p.image_size, p.label_size)}" for p in bad[:SHOW]]
        report.blocking.append(f"{len(bad)}{where} pairs differ in size beyond what the loaders resize "
                               f"(first: {bad[0].label})")
    missing = [p.image for p in pairs if not p.has_label]
    if missing and report.labelled:
        if layout.skip_unlabelled and len(missing) < len(pairs):
            action = "left out when the folder is scanned (one warning); an error when a list names them"
        else:
            action = "REFUSED: the loaders stop at start-up"
            report.blocking.append(f"{len(missing)}{where} images have no label (first: "
                                   f"{layout.label_rel(missing[0])})")
        out.append(f"  {len(missing)} images without label -> {action}: {_names(missing)}")
    elif missing:
        out.append(f"  {len(missing)} images without label (no labels are published for {report.name}) -> "
                   "usable as unlabelled target images only")
    if report.orphans:
        out.append(f"  {len(report.orphans)} labels without image -> ignored: {_names(report.orphans)}")
    errors = [e for p in pairs for e in p.errors]
    if errors:
        out.append(f"  {len(errors)} files cannot be read -> REFUSED (GTA5: at start-up; others: when drawn):")
        out += [f"    {e}" for e in errors[:SHOW]]
        report.blocking.append(f"{len(errors)}{where} files cannot be read (first: {errors[0]})")
    if full:
        undefined = [p for p in pairs if p.undefined]
        if undefined:
            out.append(f"  {len(undefined)} labels hold ids outside the {layout.name} table (0..{layout.max_id}, "
                       "255) -> REFUSED when drawn (colour or instance PNGs?):")
            out += [f"    {p.label}: {p.undefined}" for p in undefined[:SHOW]]
            report.blocking.append(f"{len(undefined)}{where} labels hold undefined ids (first: "
                                   f"{undefined[0].label})")
        blank = [p.image for p in pairs if p.blank]
        if blank:
            out.append(f"  {len(blank)} blank images (one colour) -> trained on as they are; leave them out "
                       f"with --exclude: {_names(blank)}")
    if not (ok or bad or missing or report.orphans or errors or (full and (undefined or blank))):
        out.append("  every image has its label, of the same size" + (", ids and pixels read" if full else ""))


def check(dataset: str, root: str | Path, *, full: bool = False, threads: int = HEADER_THREADS,
          progress: bool = True) -> tuple[list[SplitReport], Layout, Path]:
    """Inspect every split of `dataset` under `root`; returns the split reports, the layout and its root."""
    layout, base = resolve_layout(dataset, root)
    if not base.is_dir():
        raise DatasetError(f"{dataset} dataset root {base} does not exist (expected {layout.description})")
    reports = []
    for split in _splits(layout, base):
        images = layout.scan(base, split)
        label_files = set(_label_files(layout, base, split))
        pairs = [Pair(image, layout.label_rel(image), layout.label_rel(image) in label_files) for image in images]
        orphans = sorted(label_files - {p.label for p in pairs})
        title = f"{dataset} {split}" if layout.has_splits else dataset
        inspected = parallel_map(lambda p: _inspect(p, base, layout, full), pairs,
                                 threads=threads, progress=title if progress else None)
        for item in inspected:
            if isinstance(item, Exception):  # a bug, not the data: show it
                raise item
        labelled = split not in UNLABELLED_SPLITS
        report = SplitReport(split if layout.has_splits else "all", inspected, orphans, labelled)
        _judge(report, layout, full)
        reports.append(report)
    return reports, layout, base


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print the report; exit status 2 with the first blocking reason."""
    parser = ArgumentParser(prog="python -m dataset.check", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(LAYOUTS))
    parser.add_argument("--root", required=True, help="dataset root (BDD100K: the folder holding bdd100k/ or seg/, "
                                                      "or that folder itself)")
    parser.add_argument("--full", action="store_true", help="decode every file and check the labels' ids")
    parser.add_argument("--threads", type=positive_int, default=HEADER_THREADS,
                        help="files read at once (default %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    reports, layout, base = check(args.dataset, args.root, full=args.full, threads=args.threads,
                                  progress=not args.no_progress)
    how = "every file decoded" if args.full else "headers only; --full decodes every file and checks label ids"
    print(f"{args.dataset} at {base} ({layout.description}); {how}")
    for report in reports:
        print("\n".join(report.lines))
    usable = sum(1 for r in reports for p in r.pairs if p.has_label)
    blocking = [reason for r in reports for reason in r.blocking]
    if not any(r.pairs for r in reports):
        raise DatasetError(f"no {args.dataset} images under {base} (expected {layout.description})")
    if blocking:
        more = f" (and {len(blocking) - 1} more findings above)" if len(blocking) > 1 else ""
        raise DatasetError(f"the loaders cannot train on {base}: {blocking[0]}{more}")
    print(f"ok: the loaders can train on {base} ({usable} labelled pairs)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
