"""Figures from evaluation results: per-class IoU bars, the normalised confusion matrix, a qualitative grid.

CLI: `python -m utils.figures --json teacher.json student.json --labels teacher student --out figures/`
(add `--pred-dirs T S` with the `eval_cs.py --save-pred` folders for the qualitative grid).
Figures are drawn on `matplotlib.figure.Figure` objects (Agg canvas), never through pyplot's global state.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from dataset.labels import BDD_LUT, CITYSCAPES_LUT, CLASSES, colorize
from utils.cli import ArgumentParser, positive_int, run_cli
from utils.errors import ConfigError


def load_eval_json(path: str | Path) -> dict:
    """Read an `eval_cs.py --json` file; `ConfigError` when missing or not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(f"--json {path}: no such file") from err
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"--json {path}: not a readable JSON file ({err})") from err
    if not isinstance(data, dict) or "per_class" not in data or "mIoU" not in data:
        raise ConfigError(f"--json {path}: not an eval_cs.py result (needs 'mIoU' and 'per_class')")
    return data


def _save(fig: Figure, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    return out


def plot_per_class_iou(results: Sequence[dict], labels: Sequence[str], out: str | Path,
                       class_names: Sequence[str] = CLASSES, title: str | None = None) -> Path:
    """Grouped bars of per-class IoU (%) for several evaluation results side by side; returns the file.

    A class without a score (null: neither in the ground truth nor predicted) is left without a bar.
    """
    if len(results) != len(labels):
        raise ConfigError(f"{len(results)} results but {len(labels)} labels: give one label per --json")
    n = len(results)
    x = np.arange(len(class_names))
    width = 0.8 / max(n, 1)
    fig = Figure(figsize=(max(8.0, 0.6 * len(class_names) * max(1, n / 2)), 4.5))
    ax = fig.add_subplot()
    for k, (res, label) in enumerate(zip(results, labels)):
        per_class = res["per_class"]
        values = [per_class.get(name) for name in class_names]
        heights = [100.0 * v if v is not None else np.nan for v in values]
        miou = res.get("mIoU")
        text = f"{label} (mIoU {100.0 * miou:.1f})" if isinstance(miou, (int, float)) else label
        ax.bar(x + (k - (n - 1) / 2) * width, heights, width, label=text)
    ax.set_xticks(x)
    ax.set_xticklabels(class_names, rotation=60, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or "Per-class IoU")
    return _save(fig, out)


def normalize_confusion(confusion: np.ndarray) -> np.ndarray:
    """Rows (ground truth) scaled to sum to 1; rows without pixels stay 0."""
    mat = np.asarray(confusion, dtype=np.float64)
    rows = mat.sum(axis=1, keepdims=True)
    return np.divide(mat, rows, out=np.zeros_like(mat), where=rows > 0)


def plot_confusion(confusion: np.ndarray, out: str | Path, class_names: Sequence[str] = CLASSES,
                   title: str | None = None) -> Path:
    """The row-normalised confusion matrix (ground truth down, prediction across) as a heat map."""
    mat = normalize_confusion(confusion)
    c = mat.shape[0]
    fig = Figure(figsize=(0.45 * c + 3, 0.45 * c + 2))
    ax = fig.add_subplot()
    im = ax.imshow(mat, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(c))
    ax.set_yticks(range(c))
    ax.set_xticklabels(class_names[:c], rotation=60, ha="right", fontsize=7)
    ax.set_yticklabels(class_names[:c], fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    for i in range(c):
        for j in range(c):
            if mat[i, j] >= 0.01:
                ax.text(j, i, f"{100 * mat[i, j]:.0f}", ha="center", va="center", fontsize=5,
                        color="white" if mat[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title or "Confusion matrix (rows normalised)")
    return _save(fig, out)


def _as_rgb(panel: np.ndarray) -> np.ndarray:
    """An HxWx3 image as is, an (H, W) train-id map colourised."""
    panel = np.asarray(panel)
    return panel if panel.ndim == 3 else colorize(panel)


def plot_qualitative_grid(rows: Sequence[dict], model_labels: Sequence[str], out: str | Path) -> Path:
    """A grid with one row per image: image | ground truth | each model's prediction.

    Each row is `{"image": HxWx3 uint8, "gt": (H, W) train ids or HxWx3 colours or None,
    "preds": [one (H, W) train-id map or HxWx3 colour image per model]}`.
    """
    if not rows:
        raise ConfigError("the qualitative grid needs at least one image")
    titles = ["image", "ground truth", *model_labels]
    ncols = len(titles)
    h, w = np.asarray(rows[0]["image"]).shape[:2]
    fig = Figure(figsize=(2.6 * ncols, 2.6 * len(rows) * h / max(w, 1) + 0.4))
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for r, row in enumerate(rows):
        if len(row["preds"]) != len(model_labels):
            raise ConfigError(f"row {r}: {len(row['preds'])} predictions for {len(model_labels)} models")
        panels = [row["image"], row.get("gt"), *row["preds"]]
        for c, panel in enumerate(panels):
            ax = axes[r][c]
            ax.axis("off")
            if panel is not None:
                ax.imshow(_as_rgb(panel))
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
    fig.subplots_adjust(wspace=0.02, hspace=0.02)
    return _save(fig, out)


def _read_gt(path: str, dataset: str | None) -> np.ndarray | None:
    """A ground-truth label file as train ids (Cityscapes label ids mapped, BDD ids checked)."""
    if not path or not Path(path).is_file():
        return None
    raw = np.asarray(Image.open(path))
    lut = CITYSCAPES_LUT if dataset == "cityscapes" else BDD_LUT
    return lut[raw]


def _read_manifest(pred_dir: str | Path) -> dict:
    path = Path(pred_dir) / "manifest.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(f"--pred-dirs {pred_dir}: no manifest.json (write it with eval_cs.py --save-pred)") from err
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"--pred-dirs {pred_dir}: unreadable manifest.json ({err})") from err


def grid_rows_from_pred_dirs(pred_dirs: Sequence[str | Path], num_images: int = 4) -> list[dict]:
    """Rows for `plot_qualitative_grid` from `eval_cs.py --save-pred` folders (images every folder holds)."""
    manifests = [_read_manifest(d) for d in pred_dirs]
    by_name = [{it["name"]: it for it in m["items"]} for m in manifests]
    common = [it for it in manifests[0]["items"] if all(it["name"] in other for other in by_name[1:])]
    rows = []
    for item in common[:num_images]:
        if not item.get("image_file") or not Path(item["image_file"]).is_file():
            continue
        image = np.asarray(Image.open(item["image_file"]).convert("RGB"))
        preds = [np.asarray(Image.open(names[item["name"]]["color"]).convert("RGB")) for names in by_name]
        rows.append({"image": image, "gt": _read_gt(item.get("label_file", ""), manifests[0].get("dataset")),
                     "preds": preds})
    if not rows:
        raise ConfigError(f"--pred-dirs {' '.join(map(str, pred_dirs))}: no image shared by every folder")
    return rows


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Draw the figures for the given evaluation JSONs (and prediction folders) into --out."""
    parser = ArgumentParser(prog="python -m utils.figures", description=__doc__.splitlines()[0])
    parser.add_argument("--json", nargs="+", required=True, help="eval_cs.py --json files")
    parser.add_argument("--labels", nargs="+", help="one legend label per --json (default: file stems)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--pred-dirs", nargs="+", help="eval_cs.py --save-pred folders, one per --json")
    parser.add_argument("--num-images", type=positive_int, default=4, help="rows of the qualitative grid")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    labels = args.labels or [Path(p).stem for p in args.json]
    if len(labels) != len(args.json):
        raise ConfigError(f"--labels: {len(labels)} labels for {len(args.json)} --json files")
    results = [load_eval_json(p) for p in args.json]
    out = Path(args.out)
    written = [plot_per_class_iou(results, labels, out / "per_class_iou.png")]
    for res, label in zip(results, labels):
        if res.get("confusion") is not None:
            written.append(plot_confusion(np.asarray(res["confusion"]), out / f"confusion_{label}.png",
                                          title=f"{label}: confusion matrix (rows normalised)"))
    if args.pred_dirs:
        if len(args.pred_dirs) != len(labels):
            raise ConfigError(f"--pred-dirs: {len(args.pred_dirs)} folders for {len(labels)} --json files")
        rows = grid_rows_from_pred_dirs(args.pred_dirs, args.num_images)
        written.append(plot_qualitative_grid(rows, labels, out / "qualitative.png"))
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    sys.exit(run_cli(main))

