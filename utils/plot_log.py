"""Draw a run's loss curves (and validation mIoU) from its log.jsonl: `python -m utils.plot_log DIR/log.jsonl`."""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from utils.cli import ArgumentParser, run_cli
from utils.errors import UserError


def plot_log(log_path: str | Path, out_path: str | Path | None = None) -> Path:
    """Plot every logged loss against the step (one panel per term) and val mIoU; return the PNG path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from utils.logger import read_log

    log_path = Path(log_path)
    if not log_path.is_file():
        raise UserError(f"{log_path}: no such log file (expected DIR/log.jsonl of a training run)")
    try:
        records = read_log(log_path)
    except ValueError as err:
        raise UserError(f"{log_path}: not a JSON-lines log ({err})") from err
    series: dict[str, tuple[list, list]] = {}
    for rec in records:
        for key, value in rec.items():
            if key in ("step", "time", "phase") or not isinstance(value, (int, float)):
                continue
            xs, ys = series.setdefault(key, ([], []))
            xs.append(rec["step"])
            ys.append(value)
    if not series:
        raise UserError(f"{log_path}: the log holds no values to plot")
    keys = sorted(series, key=lambda k: (k.startswith("val/"), k.startswith("lr"), k))
    cols = min(3, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        xs, ys = series[key]
        # a marker where a line cannot show: sparse validation scores, or a single logged value
        ax.plot(xs, ys, marker="o" if key.startswith("val/") or len(xs) == 1 else None, lw=1)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    out_path = Path(out_path) if out_path else log_path.with_suffix(".png")
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: plot a log.jsonl to a PNG."""
    parser = ArgumentParser(prog="python -m utils.plot_log", description=__doc__)
    parser.add_argument("log", help="a run's log.jsonl")
    parser.add_argument("--out", default=None, help="PNG path (default: beside the log)")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    print(plot_log(args.log, args.out))


if __name__ == "__main__":
    sys.exit(run_cli(main))
