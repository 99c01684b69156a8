"""How well each checkpoint-selection criterion would have chosen, from training logs (docs/selection.md).

    python -m utils.select RUN_DIR [RUN_DIR ...] [--json OUT] [--figure PNG]

Reads each run's log.jsonl. A snapshot is a logged step holding `val/mIoU` or a `sel/` signal (every
`--eval-every`); the truth is `val/mIoU`, or `val/mIoU16` in the log of a SYNTHIA-trained run (the field's
16 classes). Per run, for every criterion of `utils.criteria` the log holds: the snapshot it picks
(its fixed direction; a tie goes to the later step, as during training), the true val mIoU of that
pick where the log has it, the regret (best true mIoU of the run minus the pick's), and Spearman's rho
and Kendall's tau between the criterion's value and the true mIoU across snapshots. Both are computed on
the value times its direction (+1 for higher-is-better, -1 otherwise), so a positive rho means the
criterion ranks snapshots the way the truth does. Baselines: `last` (the final snapshot), `random`
(the expected regret of a uniformly random snapshot) and `oracle` (regret 0). Over runs: each
criterion's mean and standard deviation of regret, rho and tau, and how often it beats `last`; pooled:
one pick among the snapshots of all runs (choosing a run's settings too). `--json OUT` writes it all
(`-` for stdout); `--figure PNG` draws each criterion's value against the true mIoU, one panel each.
"""
from __future__ import annotations

import json
import math
import statistics
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from utils.cli import ArgumentParser, check_output, run_cli
from utils.criteria import CRITERIA, LAST, ORACLE, ORACLE_16, RANDOM, Criterion, improves, oracle_key, value_of
from utils.errors import UserError

LOG_NAME = "log.jsonl"


def log_path_of(run: str | Path) -> Path:
    """The log.jsonl of a run folder (or the file itself); `UserError` when there is none."""
    path = Path(run)
    if path.is_file() and path.name == LOG_NAME:
        return path
    if not path.exists():
        raise UserError(f"RUN_DIR {run}: no such folder")
    if not path.is_dir():
        raise UserError(f"RUN_DIR {run}: not a folder (expected a training run's folder holding {LOG_NAME})")
    log = path / LOG_NAME
    if not log.is_file():
        raise UserError(f"RUN_DIR {run}: no {LOG_NAME} (expected a training run's folder)")
    return log


def read_snapshots(run: str | Path) -> list[dict]:
    """The run's snapshots in step order: {"step": int, key: float or NaN for the oracle and every criterion,
    "truth": the oracle's log key}.

    Records of one step are merged (a later record wins, e.g. after a resume). The truth, under `val/mIoU`,
    is read from `utils.criteria.oracle_key`'s key: `val/mIoU16` in a log that holds it (a SYNTHIA-trained
    run), else `val/mIoU`. `UserError` for a missing or unreadable log, or one without any snapshot.
    """
    log = log_path_of(run)
    keys = [c.key for c in CRITERIA.values()]
    read = [*keys, ORACLE_16]
    by_step: dict[int, dict] = {}
    with open(log, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{log}: line {number} is not JSON ({err.msg})") from err
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise UserError(f"{log}: line {number} is not a log record (expected an object with a 'step')")
            present = {k: value_of(record, k) for k in read if k in record}
            if present:
                by_step.setdefault(record["step"], {}).update(present)
    if not by_step:
        raise UserError(f"{log}: no snapshot (no record holds {ORACLE} or a sel/ signal; train with --eval-every)")
    truth = oracle_key(k for values in by_step.values() for k in values)
    return [{"step": step, **{k: values.get(k, math.nan) for k in keys}, ORACLE: values.get(truth, math.nan),
             "truth": truth} for step, values in sorted(by_step.items())]


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def rank_correlations(values: Sequence[float], truth: Sequence[float], sign: float = 1.0) -> tuple[float, float, int]:
    """(Spearman's rho, Kendall's tau, n) of `sign * values` against `truth` over the pairs where both are
    finite; NaN when fewer than 2 pairs or either side is constant."""
    from scipy import stats

    pairs = [(sign * v, t) for v, t in zip(values, truth) if _finite(v) and _finite(t)]
    n = len(pairs)
    if n < 2 or len({p[0] for p in pairs}) < 2 or len({p[1] for p in pairs}) < 2:
        return math.nan, math.nan, n
    xs, ys = zip(*pairs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = float(stats.spearmanr(xs, ys).statistic)
        tau = float(stats.kendalltau(xs, ys).statistic)
    return rho, tau, n


def pick(criterion: Criterion, snapshots: Sequence[dict]) -> int | None:
    """Index of the snapshot `criterion` keeps (`utils.criteria.improves` in order), None when it has no value."""
    best, index = None, None
    for i, snap in enumerate(snapshots):
        value = snap[criterion.key]
        if improves(criterion, value, best):
            best, index = value, i
    return index


def _row(snapshots: Sequence[dict], index: int, best: float) -> dict:
    snap = snapshots[index]
    row = {"step": snap["step"], "mIoU": snap[ORACLE], "regret": best - snap[ORACLE] if _finite(best) else math.nan}
    if "run" in snap:  # a pooled snapshot
        row["run"] = snap["run"]
    return row


def assess(snapshots: Sequence[dict]) -> dict:
    """Every criterion's pick, its true mIoU, regret, rho and tau on one run's (or a pool's) snapshots.

    Returns {"snapshots": n, "best_mIoU": float, "criteria": {name: row}}, rows for `last`, `random`,
    every criterion with a value in some snapshot, and `oracle` when the truth is there.
    """
    truth = [s[ORACLE] for s in snapshots]
    known = [t for t in truth if _finite(t)]
    best = max(known) if known else math.nan
    rows: dict[str, dict] = {}
    rows[LAST] = _row(snapshots, len(snapshots) - 1, best)
    mean_truth = statistics.fmean(known) if known else math.nan
    rows[RANDOM] = {"step": None, "expected": True, "mIoU": mean_truth,
                    "regret": best - mean_truth if known else math.nan}
    for name, criterion in CRITERIA.items():
        values = [s[criterion.key] for s in snapshots]
        if not any(_finite(v) for v in values):
            continue
        index = pick(criterion, snapshots)
        row = _row(snapshots, index, best)
        row["value"] = snapshots[index][criterion.key]
        row["direction"] = criterion.direction
        row["rho"], row["tau"], row["n"] = rank_correlations(values, truth, 1.0 if criterion.higher_is_better else -1.0)
        rows[name] = row
    return {"snapshots": len(snapshots), "best_mIoU": best, "criteria": rows}


def _mean_std(xs: Sequence[float]) -> tuple[float, float, int]:
    xs = [x for x in xs if _finite(x)]
    if not xs:
        return math.nan, math.nan, 0
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else math.nan, len(xs)


def over_runs(per_run: Sequence[dict]) -> dict:
    """Per criterion over runs: mean and std of regret, rho, tau and the pick's mIoU, and how often its regret
    is below `last`'s (`beats_last`), equal (`ties_last`), out of `runs` compared."""
    names = [LAST, RANDOM, *CRITERIA]
    summary = {}
    for name in names:
        rows = [(r["criteria"][name], r["criteria"][LAST]) for r in per_run if name in r["criteria"]]
        if not rows:
            continue
        entry = {}
        for field in ("regret", "rho", "tau", "mIoU"):
            mean, std, n = _mean_std([row.get(field, math.nan) for row, _ in rows])
            entry[field] = {"mean": mean, "std": std, "n": n}
        compared = [(row["regret"], last["regret"]) for row, last in rows
                    if _finite(row["regret"]) and _finite(last["regret"])]
        entry["beats_last"] = sum(1 for mine, last in compared if mine < last - 1e-12)
        entry["ties_last"] = sum(1 for mine, last in compared if abs(mine - last) <= 1e-12)
        entry["runs"] = len(compared)
        summary[name] = entry
    return summary


def pooled(runs: Sequence[tuple[str, list[dict]]]) -> dict:
    """One pick among the snapshots of all runs (`assess` on their union, each row naming its run); `last` is
    the expected regret of the last snapshot of a random run."""
    union = [dict(s, run=name) for name, snaps in runs for s in snaps]
    result = assess(union)
    lasts = [snaps[-1][ORACLE] for _, snaps in runs if _finite(snaps[-1][ORACLE])]
    mean_last = statistics.fmean(lasts) if lasts else math.nan
    best = result["best_mIoU"]
    result["criteria"][LAST] = {"step": None, "expected": True, "mIoU": mean_last,
                                "regret": best - mean_last if lasts and _finite(best) else math.nan}
    return result


def select_runs(run_dirs: Sequence[str | Path]) -> dict:
    """The full report of `python -m utils.select` for these runs (see the module's docstring)."""
    runs = [(str(d), read_snapshots(d)) for d in run_dirs]
    per_run = [{"run": name, "truth": snaps[0]["truth"], "steps": [s["step"] for s in snaps], **assess(snaps)}
               for name, snaps in runs]
    report = {"criteria": {name: {"key": c.key, "direction": c.direction, "label_free": c.label_free}
                           for name, c in CRITERIA.items()},
              "runs": per_run, "over_runs": over_runs(per_run)}
    if len(runs) > 1:
        report["pooled"] = pooled(runs)
    report["_snapshots"] = runs  # for the figure; dropped from the JSON
    return report


# --- output -----------------------------------------------------------------------------------------------
def _fmt(x, pct: bool = False, digits: int = 3) -> str:
    if x is None or not _finite(x):
        return "-"
    return f"{100 * x:.1f}" if pct else f"{x:.{digits}g}" if abs(x) >= 1e3 else f"{x:.{digits}f}"


def _run_table(result: dict) -> list[str]:
    lines = [f"{'criterion':<14}{'dir':<5}{'pick':>8}{'value':>10}{'mIoU':>8}{'regret':>8}{'rho':>8}{'tau':>8}"]
    for name, row in result["criteria"].items():
        where = row.get("step")
        where = ("E" if row.get("expected") else "-") if where is None else str(where)
        if "run" in row:
            where = f"{Path(row['run']).name}@{where}"
        lines.append(f"{name:<14}{row.get('direction', ''):<5}{where:>8}{_fmt(row.get('value')):>10}"
                     f"{_fmt(row['mIoU'], pct=True):>8}{_fmt(row['regret'], pct=True):>8}"
                     f"{_fmt(row.get('rho'), digits=2):>8}{_fmt(row.get('tau'), digits=2):>8}")
    return lines


def _pm(entry: dict, field: str, pct: bool) -> str:
    mean, std = entry[field]["mean"], entry[field]["std"]
    if not _finite(mean):
        return "-"
    scale = 100 if pct else 1
    digits = 1 if pct else 2
    return f"{scale * mean:.{digits}f}" + (f" ± {scale * std:.{digits}f}" if _finite(std) else "")


def format_report(report: dict) -> str:
    """The report as text: one table per run, then over runs, then the pooled pick."""
    out = []
    for result in report["runs"]:
        steps = result["steps"]
        out.append(f"== {result['run']}: {result['snapshots']} snapshots (steps {steps[0]}..{steps[-1]}), "
                   f"best {result['truth']} {_fmt(result['best_mIoU'], pct=True)}")
        out += _run_table(result)
        out.append("")
    out.append(f"== over {len(report['runs'])} runs (mean ± std; mIoU and regret in points)")
    out.append(f"{'criterion':<14}{'regret':>14}{'rho':>14}{'tau':>14}{'beats last':>12}")
    for name, entry in report["over_runs"].items():
        beats = f"{entry['beats_last']}/{entry['runs']}" if name != LAST else "-"
        out.append(f"{name:<14}{_pm(entry, 'regret', True):>14}{_pm(entry, 'rho', False):>14}"
                   f"{_pm(entry, 'tau', False):>14}{beats:>12}")
    if "pooled" in report:
        out.append("")
        out.append(f"== pooled: one pick among the {report['pooled']['snapshots']} snapshots of all runs "
                   f"(last: the last snapshot of a random run)")
        out += _run_table(report["pooled"])
    out.append("")
    out.append("regret = best true val mIoU minus the pick's (points); random: expected over snapshots; "
               "rho/tau: the criterion (times its direction) against the true mIoU")
    return "\n".join(out)


def _jsonable(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items() if not k.startswith("_")}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def plot_report(report: dict, out: str | Path) -> Path:
    """Each label-free criterion's value (x) against the true val mIoU (y) over every run's snapshots, one
    panel per criterion, each run's pick starred; returns the PNG."""
    from matplotlib.figure import Figure

    runs = report["_snapshots"]
    names = [n for n, c in CRITERIA.items() if c.label_free
             and any(_finite(s[c.key]) and _finite(s[ORACLE]) for _, snaps in runs for s in snaps)]
    if not names:
        raise UserError(f"--figure {out}: no snapshot holds both a signal and {ORACLE} (nothing to draw)")
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for ax, name in zip(axes.flat, names):
        criterion = CRITERIA[name]
        for (run, snaps), color, result in zip(runs, colors, report["runs"]):
            pts = [(s[criterion.key], 100 * s[ORACLE]) for s in snaps
                   if _finite(s[criterion.key]) and _finite(s[ORACLE])]
            if pts:
                ax.plot(*zip(*pts), "o", ms=3.5, alpha=0.75, color=color, label=Path(run).name)
            row = result["criteria"].get(name, {})
            if row.get("step") is not None and _finite(row.get("mIoU", math.nan)):
                ax.plot(row["value"], 100 * row["mIoU"], "*", ms=12, color=color, markeredgecolor="black")
        entry = report["over_runs"].get(name, {})
        rho = entry.get("rho", {}).get("mean", math.nan)
        ax.set_title(f"{name} ({'higher' if criterion.higher_is_better else 'lower'} is better), "
                     f"rho {_fmt(rho, digits=2)}", fontsize=9)
        ax.set_xlabel(criterion.key, fontsize=8)
        ax.set_ylabel("true val mIoU (%)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    if len(runs) <= 10:
        axes.flat[0].legend(fontsize=6, loc="best")
    fig.suptitle("Selection signals against the true val mIoU (star: each run's pick)", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: report (and draw) how each criterion would have chosen in the given runs."""
    parser = ArgumentParser(prog="python -m utils.select", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="training run folders (each with a log.jsonl)")
    parser.add_argument("--json", default=None, metavar="OUT", help="write the report as JSON ('-': stdout)")
    parser.add_argument("--figure", default=None, metavar="PNG", help="draw signal vs true mIoU per criterion")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    args = parser.parse_args(argv)
    for path, flag in ((args.json, "--json"), (args.figure, "--figure")):
        if path is not None and path != "-":
            check_output(path, flag)
    report = select_runs(args.runs)
    figure = plot_report(report, args.figure) if args.figure else None
    if args.json == "-":
        print(json.dumps(_jsonable(report), indent=2))
        return
    if args.json:
        Path(args.json).write_text(json.dumps(_jsonable(report), indent=2) + "\n", encoding="utf-8")
    print(format_report(report))
    for path in (args.json, figure):
        if path:
            print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
