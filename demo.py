"""The paper's comparison in miniature, on the CPU, with no download: `python demo.py`.

Generates the synthetic driving-scene benchmark (GTA5-like source, Cityscapes-like target) when it is
absent, then trains, through the very training scripts of this repository: a source-only DRN-D-22, the
undistilled DRN-D-22 student and the DRN-D-38 teacher (both with multi-level adversarial adaptation),
and the DAKD student distilled from that teacher. Each is scored on the synthetic Cityscapes val split
with eval_cs.py, as the mean mIoU of its last snapshots (--score-last); the table, the paper's two claims as
per-seed differences, results.json, results.md and figures land in --out. With several seeds, summary.{json,md}
give each claim's mean paired difference with its Student-t interval; `--combine DIR DIR` sets such summaries
from different machines (CPU capabilities) side by side.

Every net starts from random weights (no ImageNet weights offline), with every residual block starting as
the identity (--zero-init-residual), and trains with a larger learning rate than the paper's fine-tuning
schedules; all rows share the seed, the image size, the batch and, where compared, the total number of
steps.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

import eval_cs
import train_gta2cs_multi_drnd22
import train_gta2cs_multi_drnd38
import train_gta2cs_ts_multi
from model.discriminator import MIN_SIZE
from utils.claims import LEVEL, METHOD, paired_difference, verdict
from utils.cli import ArgumentParser, check_output, positive_float, positive_int, run_cli, size_arg
from utils.errors import ConfigError
from utils.files import write_text_atomic
from utils.logger import describe_machine, environment
from utils.objective import PARADIGMS

DATA_DIR = "data/synthetic"
OUT_DIR = "runs/demo"
SIZE = (64, 32)               # (w, h) of the Cityscapes-like frames; source frames keep GTA5's aspect
NUM_TRAIN, NUM_VAL = 200, 500  # 500 val frames, as many as Cityscapes' val: less scoring noise, 10 s per score
DATA_SEED = 0
STEPS = 300                   # per compared row; the DAKD student's phases add up to the same total
TEACHER_STEPS = 600           # twice the rows' steps: from scratch, the deeper net needs them to pull ahead
BATCH_SIZE = 4
LEARNING_RATE = 0.01          # from scratch, not the paper's 2.5e-4 fine-tuning rate
ZERO_INIT_RESIDUAL = True     # from scratch, the DRN-D-38 teacher trains badly without it (README)
PARADIGM = "sequential"
SEED = 1234
NUM_WORKERS = 1
SHOW_CLASSES = ("road", "building", "vegetation", "sky", "car", "person")
QUICK = {"size": (64, 32), "num_train": 16, "num_val": 8, "steps": 4, "batch_size": 2}
# Each row is scored as the mean mIoU of its last SCORE_LAST snapshots, saved every 1/SNAPSHOTS of its steps
# (the last quarter of its schedule): the final weights alone carry the noise of the last few batches
# (batch-norm statistics above all); the snapshots' mean is steadier. The final checkpoint's mIoU is kept too.
SCORE_LAST = 4
SNAPSHOTS = 12
# The paper's two claims as (id, statement, better row, worse row): each is judged on per-seed differences.
CLAIMS = (("i", "adaptation beats source-only", "student", "source_only"),
          ("ii", "the DAKD student beats the undistilled (adapted) student", "dakd", "student"))

# Relative cost of one step of each stage (a source-only DRN-D-22 step = 1), for the time estimate.
# Measured in a plain `python demo.py` run (source only 43 s for 300 steps; student 2.9x, teacher 3.9x, DAKD
# 3.6x) and, for the diagnostic rows, in the 3-seed `--oracle` runs.
STAGE_COST = {"source_only": 1.0, "student": 2.9, "teacher": 3.9, "dakd": 3.6, "oracle_teacher": 1.2,
              "oracle_dakd": 2.3}

# --selection-grid (docs/selection.md): the adapted DRN-D-22 student over a grid of adversarial weights x seeds,
# validated every GRID_EVERY steps, to measure how well each checkpoint-selection criterion would have chosen.
# Fixed, with every criterion's settings (utils/criteria.py, utils/signals.py), before any grid run was scored.
# --lambda-adv-main (aux: a fifth, the paper's ratio): 0, source only; 0.001, the paper's; 1.0, a thousand times
# it, the negative control. Three weights x three seeds fit in about 80 minutes on a shared 2-core CPU.
GRID_ADV_MAIN = (0.0, 0.001, 1.0)
GRID_SEEDS = (1234, 1235, 1236)
GRID_EVERY = 25                           # 12 snapshots of a 300-step run
GRID_SIGNAL_IMAGES = 100                  # of the 200 target train images
GRID_HOLDOUT = 20                         # of the 200 source frames, held out of training
GRID_QUICK = {"weights": (0.0, 1.0), "every": 2, "signal_images": 4, "holdout": 2}


@dataclass(frozen=True)
class Stage:
    """One row of the comparison: which script trains it and with which extra flags."""

    key: str
    title: str
    script: object
    flags: tuple[str, ...]
    steps: int
    teacher: str | None = None        # key of the stage whose final.pth is distilled
    source: str = "gta5"              # the benchmark's layout it learns labels from


def parse_args(argv: Sequence[str] | None):
    """The demo's command line."""
    p = ArgumentParser(prog="demo.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=OUT_DIR, help="output folder")
    p.add_argument("--data-dir", default=DATA_DIR, help="synthetic benchmark folder (generated when absent)")
    p.add_argument("--quick", action="store_true", help="a smoke run in about a minute (numbers not meaningful)")
    p.add_argument("--paradigm", choices=tuple(PARADIGMS), default=PARADIGM)
    p.add_argument("--seeds", type=int, nargs="+", default=[SEED],
                   help="training seed(s); with several, each run goes to OUT/seed_N and OUT/summary.md "
                        "gets the mean and spread of every row")
    p.add_argument("--steps", type=positive_int, default=None, help=f"steps per row (default {STEPS})")
    p.add_argument("--teacher-steps", type=positive_int, default=None,
                   help=f"steps of the teacher (default {TEACHER_STEPS}; --quick: --steps)")
    p.add_argument("--size", type=size_arg, default=None, help=f"frame size W,H (default {SIZE[0]},{SIZE[1]})")
    p.add_argument("--batch-size", type=positive_int, default=None, help=f"default {BATCH_SIZE}")
    p.add_argument("--learning-rate", type=positive_float, default=LEARNING_RATE)
    p.add_argument("--zero-init-residual", action=argparse.BooleanOptionalAction, default=ZERO_INIT_RESIDUAL,
                   help="start every residual block as the identity (the training scripts' flag)")
    p.add_argument("--score-last", type=positive_int, default=SCORE_LAST,
                   help=f"score each row as the mean mIoU of its last K snapshots, saved every 1/{SNAPSHOTS} of its "
                        f"steps (default {SCORE_LAST}; 1: the final weights alone)")
    p.add_argument("--combine", nargs="+", metavar="DIR", default=None,
                   help="no training: set the summaries (DIR/summary.json) of multi-seed demos run on different "
                        "machines or CPU capabilities side by side, into --out/combined.{json,md}")
    p.add_argument("--oracle", action="store_true",
                   help="two diagnostic rows more (about 5 minutes per seed here): a DRN-D-38 trained on the target's "
                        "train labels, and a DAKD student distilled from it, to show what a stronger teacher gives")
    p.add_argument("--selection-grid", type=int, nargs="*", metavar="SEED", default=None,
                   help="instead of the comparison: train the adapted student over a grid of adversarial weights "
                        f"{GRID_ADV_MAIN} x these seeds (none given: {' '.join(map(str, GRID_SEEDS))}), validated "
                        f"every {GRID_EVERY} steps, into OUT/selection_grid, and measure how well each checkpoint-"
                        "selection criterion would have chosen (docs/selection.md)")
    p.add_argument("--num-workers", type=int, default=NUM_WORKERS)
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch compute threads (default: the cores left after the loader workers)")
    p.add_argument("--device", default="auto")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    base = QUICK if args.quick else {"size": SIZE, "num_train": NUM_TRAIN, "num_val": NUM_VAL, "steps": STEPS,
                                     "batch_size": BATCH_SIZE}
    args.size = args.size or base["size"]
    args.steps = args.steps or base["steps"]
    args.teacher_steps = args.teacher_steps or (args.steps if args.quick else TEACHER_STEPS)
    args.batch_size = args.batch_size or base["batch_size"]
    args.num_train, args.num_val = base["num_train"], base["num_val"]
    if args.score_last > SNAPSHOTS:
        p.error(f"--score-last {args.score_last}: a row saves {SNAPSHOTS} snapshots; give at most {SNAPSHOTS}")
    if args.combine is not None and len(args.combine) < 2:
        p.error("--combine needs two or more folders (each holding the summary.json of a multi-seed demo)")
    if args.paradigm == "sequential" and args.steps < 2:
        p.error("--paradigm sequential needs --steps >= 2 (two phases)")
    if min(args.size) < MIN_SIZE:
        p.error(f"--size {args.size[0]},{args.size[1]}: the adapted rows' discriminators need frames of at least "
                f"{MIN_SIZE}x{MIN_SIZE}")
    return args


def data_root(args) -> Path:
    """Where the synthetic benchmark for the demo's size and frame count lives."""
    w, h = args.size
    return Path(args.data_dir) / f"{w}x{h}_n{args.num_train}_v{args.num_val}_s{DATA_SEED}"


def ensure_data(args) -> Path:
    """The synthetic benchmark for the demo's size, generated on first use."""
    from dataset.synthetic import generate

    w, h = args.size
    root = data_root(args)
    stamp = root / "COMPLETE"
    if not stamp.is_file():
        print(f"generating the synthetic benchmark into {root} ({args.num_train} train / {args.num_val} val, "
              f"{w}x{h}) ...", flush=True)
        generate(root, num_train=args.num_train, num_val=args.num_val, size=(w, h), seed=DATA_SEED)
        write_text_atomic(stamp, "generated by demo.py\n")
    return root


def stages(args) -> list[Stage]:
    """The four rows, in training order (the teacher before the DAKD student)."""
    s = args.steps
    no_adv = ("--lambda-adv-aux", "0", "--lambda-adv-main", "0")
    if args.paradigm == "sequential":
        first = s // 2
        dakd = ("--paradigm", "sequential", "--num-steps", str(first), "--num-steps-target", str(s - first))
    else:
        dakd = ("--paradigm", args.paradigm, "--num-steps", str(s))
    rows = [
        Stage("source_only", "DRN-D-22 source only", train_gta2cs_multi_drnd22, no_adv, s),
        Stage("student", "DRN-D-22 adapted (undistilled student)", train_gta2cs_multi_drnd22, (), s),
        Stage("teacher", "DRN-D-38 adapted (teacher)", train_gta2cs_multi_drnd38,
              ("--num-steps", str(args.teacher_steps)), args.teacher_steps),
        Stage("dakd", f"DRN-D-22 DAKD student ({args.paradigm})", train_gta2cs_ts_multi, dakd, s, teacher="teacher"),
    ]
    if args.oracle:
        # Diagnostic only: this teacher reads the target's train labels, which no compared row may read.
        oracle = ("--source", "cityscapes", "--num-steps", str(args.teacher_steps), *no_adv)
        rows += [
            Stage("oracle_teacher", "DRN-D-38 oracle, target labels (diagnostic)", train_gta2cs_multi_drnd38,
                  oracle, args.teacher_steps, source="cityscapes"),
            Stage("oracle_dakd", f"DRN-D-22 DAKD student from the oracle ({args.paradigm}, diagnostic)",
                  train_gta2cs_ts_multi, dakd, s, teacher="oracle_teacher"),
        ]
    return rows


def snapshot_every(steps: int) -> int:
    """Steps between the snapshots of a row of `steps` steps (SNAPSHOTS of them, the last at its end)."""
    return max(1, steps // SNAPSHOTS)


def common_flags(args, data: Path, out: Path, steps: int) -> list[str]:
    """Flags every training stage shares: data, sizes, batch, schedule, seed, device, snapshots."""
    size = f"{args.size[0]},{args.size[1]}"
    return ["--data-dir-target", str(data / "cityscapes"),
            "--input-size", size, "--input-size-target", size, "--eval-size", size,
            "--batch-size", str(args.batch_size), "--num-steps", str(args.steps),
            "--learning-rate", str(args.learning_rate), "--pretrained", "none", "--random-seed", str(args.seed),
            "--num-workers", str(args.num_workers), "--device", args.device, "--snapshot-dir", str(out),
            "--save-pred-every", str(snapshot_every(steps)), "--keep-last", str(max(2, args.score_last)),
            "--log-every", "10", "--random-mirror",
            "--zero-init-residual" if args.zero_init_residual else "--no-zero-init-residual"]


def check_out_folder(args, out: Path) -> None:
    """Create --out; a folder from an earlier demo is reused only when its settings are the same."""
    settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
                if k not in ("out", "debug", "num_workers", "device", "threads", "seeds", "oracle", "combine")}
    stamp = out / "settings.json"
    try:
        out.mkdir(parents=True, exist_ok=True)
        if [p.name for p in out.iterdir()] == [stamp.name]:
            stamp.unlink()  # a run that never started a stage holds nothing to keep: new settings may take over
        if stamp.is_file():
            if json.loads(stamp.read_text()) != settings:
                raise ConfigError(f"--out {out}: holds a demo run with other settings ({stamp}); "
                                  "choose another --out or delete that folder")
            return
        if any(out.iterdir()):
            raise ConfigError(f"--out {out}: the folder is not empty and holds no demo run; choose another --out")
        write_text_atomic(stamp, json.dumps(settings, indent=2) + "\n")
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot write there ({err.strerror})") from err


def _fmt(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def train_all(args, data: Path, out: Path) -> dict[str, Path]:
    """Train every stage through its script's main(); return each stage's final.pth."""
    plan = stages(args)
    work = {st.key: STAGE_COST[st.key] * st.steps for st in plan}
    finals: dict[str, Path] = {}
    started, done_work = time.time(), 0.0
    for i, st in enumerate(plan, 1):
        elapsed = time.time() - started
        todo = sum(work[s.key] for s in plan[i - 1:] if not (out / s.key / "final.pth").is_file())
        left = "" if done_work == 0 else f", about {_fmt(elapsed / done_work * todo)} of training left"
        print(f"\n[{i}/{len(plan)}] {st.title}: {st.steps} steps (elapsed {_fmt(elapsed)}{left})", flush=True)
        folder = out / st.key
        finals[st.key] = folder / "final.pth"
        if finals[st.key].is_file():
            print(f"reusing {finals[st.key]} (same settings; delete {folder} to train it again)")
        else:
            flags = [*common_flags(args, data, folder, st.steps), "--data-dir", str(data / st.source), *st.flags]
            if st.teacher:
                flags += ["--teacher", str(finals[st.teacher])]
            if (folder / "last.pth").is_file():  # an interrupted earlier demo: continue where it stopped
                print(f"resuming {folder / 'last.pth'}")
                flags += ["--resume", str(folder / "last.pth")]
            status = st.script.main(flags)
            if status:
                raise SystemExit(status)
            done_work += work[st.key]  # only trained stages say how fast this machine is
        score_snapshots(args, data, folder)
    print(f"\ntraining done in {_fmt(time.time() - started)}", flush=True)
    return finals


def _eval_argv(args, data: Path, ckpt: Path, json_path: Path) -> list[str]:
    size = f"{args.size[0]},{args.size[1]}"
    return ["--restore-from", str(ckpt), "--data-dir", str(data / "cityscapes"), "--dataset", "cityscapes",
            "--split", "val", "--input-size", size, "--batch-size", "8", "--device", args.device,
            "--json", str(json_path), "--overwrite-pred", "--no-progress"]  # a rerun may refill its own folders


def score_snapshots(args, data: Path, folder: Path) -> list[dict]:
    """mIoU and pixel accuracy of a stage's last --score-last snapshots (step_N.pth), kept in
    folder/eval_snapshots.json; the snapshots are deleted once scored (each holds a whole training state)."""
    record = folder / "eval_snapshots.json"
    if record.is_file():
        return json.loads(record.read_text())
    snapshots = sorted(folder.glob("step_*.pth"))[-args.score_last:]
    if not snapshots:
        raise ConfigError(f"{folder}: no step_*.pth snapshots to score (a run from an older demo?); "
                          f"delete {folder} to train it again")
    scores = []
    for snap in snapshots:
        json_path = folder / f"eval_{snap.stem}.json"
        with contextlib.redirect_stdout(io.StringIO()):  # one line per snapshot, not eval_cs.py's table
            eval_cs.main(_eval_argv(args, data, snap, json_path))
        result = json.loads(json_path.read_text())
        json_path.unlink()
        scores.append({"step": int(snap.stem.split("_")[1]), "mIoU": result["mIoU"], "pixel_acc": result["pixel_acc"]})
        print(f"snapshot {snap.name}: mIoU {100 * result['mIoU']:.2f}", flush=True)
    write_text_atomic(record, json.dumps(scores, indent=2) + "\n")
    for snap in folder.glob("step_*.pth"):
        snap.unlink()
    return scores


def evaluate_all(args, data: Path, out: Path, finals: dict[str, Path]) -> dict[str, dict]:
    """Score each final.pth on the synthetic Cityscapes val with eval_cs.py; return the parsed JSONs."""
    results = {}
    for key, ckpt in finals.items():
        json_path = out / key / "eval_cityscapes_val.json"
        print(f"\nevaluating {key}", flush=True)
        eval_cs.main([*_eval_argv(args, data, ckpt, json_path), "--save-pred", str(out / key / "pred")])
        results[key] = json.loads(json_path.read_text())
    return results


def _trained_on(folder: Path) -> str:
    """Where a stage was trained, from its config.json (`describe_machine`), or 'unknown'."""
    try:
        env = json.loads((folder / "config.json").read_text())["environment"]
    except (OSError, ValueError, KeyError):
        return "unknown"
    return describe_machine(env) if "cpu_capability" in env else "unknown"


def seed_claims(rows: list[dict]) -> list[dict]:
    """The paper's claims on one seed: the score difference (mIoU points) of each claim's two rows."""
    by_key = {r["model"]: r for r in rows}
    return [{"id": cid, "statement": text, "better": better, "worse": worse, "unit": "mIoU points",
             "difference": 100 * (by_key[better]["mIoU_last"] - by_key[worse]["mIoU_last"]),
             "difference_final": 100 * (by_key[better]["mIoU"] - by_key[worse]["mIoU"])}
            for cid, text, better, worse in CLAIMS]


def summarize(args, out: Path, results: dict[str, dict]) -> dict:
    """results.json / results.md and the printed table."""
    from model import build_seg_model, count_parameters

    plan = {st.key: st for st in stages(args)}
    params = {"drn_d_22": count_parameters(build_seg_model("drn_d_22")),
              "drn_d_38": count_parameters(build_seg_model("drn_d_38"))}
    env = environment()
    rows = []
    for key, res in results.items():
        arch = plan[key].script.ARCH
        snaps = json.loads((out / key / "eval_snapshots.json").read_text())
        rows.append({"model": key, "title": plan[key].title, "arch": arch, "parameters": params[arch],
                     "mIoU_last": sum(s["mIoU"] for s in snaps) / len(snaps),
                     "pixel_acc_last": sum(s["pixel_acc"] for s in snaps) / len(snaps), "snapshots": snaps,
                     "mIoU": res["mIoU"], "pixel_acc": res["pixel_acc"], "mean_acc": res["mean_acc"],
                     "per_class": res["per_class"], "trained_on": _trained_on(out / key)})
    score = f"mean mIoU of the last {args.score_last} snapshots (saved every 1/{SNAPSHOTS} of a row's steps)"
    summary = {
        "settings": {"size": list(args.size), "steps": args.steps, "teacher_steps": args.teacher_steps,
                     "batch_size": args.batch_size,
                     "learning_rate": args.learning_rate, "zero_init_residual": args.zero_init_residual,
                     "paradigm": args.paradigm, "seed": args.seed, "oracle": args.oracle,
                     "quick": args.quick, "num_train": args.num_train, "num_val": args.num_val,
                     "score_last": args.score_last, "snapshots": SNAPSHOTS},
        "note": ("smoke run (--quick): numbers are not meaningful" if args.quick else
                 "synthetic benchmark, random init; see README for the summary over seeds"),
        "score": score,
        "environment": env,
        "machine": describe_machine(env),
        "models": rows,
        "claims": seed_claims(rows),
    }
    write_text_atomic(out / "results.json", json.dumps(summary, indent=2) + "\n")
    head = ["model", "params", "mIoU (score)", "mIoU (final)", "pixel acc", *SHOW_CLASSES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ious = [r["per_class"].get(c) for c in SHOW_CLASSES]
        cells = [r["title"], f"{r['parameters'] / 1e6:.2f} M", f"{100 * r['mIoU_last']:.1f}", f"{100 * r['mIoU']:.1f}",
                 f"{100 * r['pixel_acc']:.1f}", *("-" if v is None else f"{100 * v:.1f}" for v in ious)]
        lines.append("| " + " | ".join(cells) + " |")
    claims = ["| claim | difference (score) | difference (final) |", "|---|---|---|"]
    claims += [f"| ({c['id']}) {c['statement']} | {c['difference']:+.1f} | {c['difference_final']:+.1f} |"
               for c in summary["claims"]]
    table, claim_table = "\n".join(lines), "\n".join(claims)
    write_text_atomic(
        out / "results.md",
        f"# Demo results (synthetic GTA5 -> Cityscapes val, seed {args.seed})\n\n{summary['note']}\n\n"
        f"Computed with {summary['machine']}. Score: {score}; final: the final weights; per-class IoU and pixel "
        f"accuracy of the final weights.\n\n{table}\n\n## Claims\n\nDifference of the two rows (mIoU points) "
        f"on this seed; `--seeds` with several seeds gives each claim an interval.\n\n{claim_table}\n")
    print(f"\n{table}\n\n{claim_table}\n\n({summary['machine']}; score: {score})")
    if args.quick:
        print("\n(--quick: a smoke run; the numbers are not meaningful)")
    return summary


def draw_figures(out: Path, results: dict[str, dict]) -> None:
    """Per-class IoU bars of the four rows and a qualitative grid from the saved predictions."""
    from utils.figures import grid_rows_from_pred_dirs, plot_per_class_iou, plot_qualitative_grid

    keys = list(results)
    plot_per_class_iou([results[k] for k in keys], keys, out / "per_class_iou.png",
                       title="Synthetic GTA5 -> Cityscapes val: per-class IoU")
    rows = grid_rows_from_pred_dirs([out / k / "pred" for k in keys], num_images=4)
    plot_qualitative_grid(rows, keys, out / "qualitative.png")


def run_one(args, out: Path) -> dict:
    """The whole demo for one seed (`args.seed`) into `out`; returns the summary written to results.json."""
    if not (data_root(args) / "COMPLETE").is_file():  # a finished benchmark is only read
        check_output(args.data_dir, "--data-dir", folder=True)
    check_out_folder(args, out)
    w, h = args.size
    quick = " (--quick smoke run)" if args.quick else ""
    print(f"demo: {w}x{h} frames, {args.steps} steps per compared row ({args.teacher_steps} for the teacher), "
          f"batch {args.batch_size}, lr {args.learning_rate}, "
          f"zero-init residual {'on' if args.zero_init_residual else 'off'}, "
          f"paradigm {args.paradigm}, seed {args.seed}, {torch.get_num_threads()} compute thread(s){quick}")
    data = ensure_data(args)
    finals = train_all(args, data, out)
    results = evaluate_all(args, data, out, finals)
    summary = summarize(args, out, results)
    draw_figures(out, results)
    print(f"\nwrote {out / 'results.json'}, {out / 'results.md'}, {out / 'per_class_iou.png'}, "
          f"{out / 'qualitative.png'}")
    return summary


METHOD_NOTE = f"{100 * LEVEL:.0f}% {METHOD}; verdict: holds / reversed when the interval lies above / below 0"


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def judge(better: list[float], worse: list[float]) -> dict:
    """A claim's paired per-seed statistics (utils.claims) with its verdict."""
    stats = paired_difference(better, worse, LEVEL)
    return {**stats, "verdict": verdict(stats)}


def claim_row(label: str, stats: dict) -> str:
    """One markdown row: label, per-seed differences, mean, std, interval, verdict."""
    per_seed = " / ".join(f"{d:+.1f}" for d in stats["differences"])
    if stats["interval"] is None:
        return f"| {label} | {per_seed} | {stats['mean']:+.1f} | - | - | {stats['verdict']} |"
    low, high = stats["interval"]
    return (f"| {label} | {per_seed} | {stats['mean']:+.1f} | {stats['std']:.1f} | [{low:+.1f}, {high:+.1f}] | "
            f"{stats['verdict']} |")


def claims_table(rows: list[tuple[str, dict]], seeds: list[int]) -> str:
    """A markdown table of claim rows: (label, judged statistics)."""
    head = [f"| claim | per-seed difference (seeds {', '.join(map(str, seeds))}) | mean | std | "
            f"{100 * LEVEL:.0f}% interval | verdict |", "|---|---|---|---|---|---|"]
    return "\n".join(head + [claim_row(label, stats) for label, stats in rows])


def summarize_seeds(out: Path, summaries: dict[int, dict]) -> str:
    """Each row's mean and sample std over seeds, and each claim's paired per-seed differences with their mean,
    std and Student-t interval, to OUT/summary.{json,md}; returns the markdown."""
    seeds = sorted(summaries)
    first = summaries[seeds[0]]
    machines = sorted({summaries[s]["machine"] for s in seeds} |
                      {r["trained_on"] for s in seeds for r in summaries[s]["models"]})
    rows = []
    table = ["| model | mIoU, score (mean ± std) | per seed | mIoU, final (mean ± std) | pixel acc, final |",
             "|---|---|---|---|---|"]
    for i, model in enumerate(first["models"]):
        values = {key: [100 * summaries[s]["models"][i][key] for s in seeds]
                  for key in ("mIoU_last", "mIoU", "pixel_acc")}
        rows.append({"model": model["model"], "title": model["title"], **values,
                     **{f"{key}_mean": statistics.fmean(v) for key, v in values.items()},
                     **{f"{key}_std": _sd(v) for key, v in values.items()}})
        last, final, acc = values["mIoU_last"], values["mIoU"], values["pixel_acc"]
        table.append(f"| {model['title']} | {statistics.fmean(last):.1f} ± {_sd(last):.1f} | "
                     f"{' / '.join(f'{m:.1f}' for m in last)} | {statistics.fmean(final):.1f} ± {_sd(final):.1f} | "
                     f"{statistics.fmean(acc):.1f} ± {_sd(acc):.1f} |")
    by_key = {r["model"]: r for r in rows}
    claims = []
    for cid, text, better, worse in CLAIMS:
        claims.append({"id": cid, "statement": text, "better": better, "worse": worse, "unit": "mIoU points",
                       **judge(by_key[better]["mIoU_last"], by_key[worse]["mIoU_last"]),
                       "final": judge(by_key[better]["mIoU"], by_key[worse]["mIoU"])})
    claim_rows = []
    for c in claims:
        claim_rows += [(f"({c['id']}) {c['statement']}", c), (f"({c['id']}), final weights", c["final"])]
    settings = {k: v for k, v in first["settings"].items() if k != "seed"}
    summary = {"seeds": seeds, "settings": settings, "score": first["score"], "machines": machines,
               "models": rows, "claims": claims}
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    mixed = "**mixed machines**: " if len(machines) > 1 else ""
    text = (f"{mixed}computed with {'; '.join(machines)}. Score: {first['score']}.\n\n" + "\n".join(table) +
            f"\n\nClaims: per-seed difference of the two rows (mIoU points), its mean, sample std and "
            f"{METHOD_NOTE}.\n\n" + claims_table(claim_rows, seeds))
    write_text_atomic(out / "summary.md", f"# Demo over seeds {', '.join(map(str, seeds))}\n\n{text}\n")
    return text


def _grid_plan(args) -> dict:
    """The grid's weights, validation interval, signal images and source hold-out (smaller with --quick)."""
    if args.quick:
        return dict(GRID_QUICK)
    return {"weights": GRID_ADV_MAIN, "every": GRID_EVERY, "signal_images": GRID_SIGNAL_IMAGES,
            "holdout": GRID_HOLDOUT}


def selection_grid(args, out: Path, seeds: Sequence[int]) -> dict:
    """Train the grid (weights x `seeds`, seed after seed) through train_gta2cs_multi_drnd22.py into `out`, then
    write `out`/selection.{md,json,png}: each criterion's rank correlation with the true val mIoU and regret,
    within a run and pooled over a seed's weights, mean and std over seeds (utils/select.py)."""
    plan = _grid_plan(args)
    args.seed = seeds[0]
    stamped = {k: list(v) if isinstance(v, tuple) else v for k, v in plan.items()}  # as settings.json reads back
    check_out_folder(argparse.Namespace(**vars(args), grid=stamped, grid_seeds=list(seeds)), out)
    data = ensure_data(args)
    size = f"{args.size[0]},{args.size[1]}"
    runs: dict[tuple[float, int], Path] = {}
    started = time.time()
    for i, (seed, weight) in enumerate([(s, w) for s in seeds for w in plan["weights"]], 1):
        folder = runs.setdefault((weight, seed), out / f"adv{weight:g}_seed{seed}")
        print(f"\n[{i}/{len(seeds) * len(plan['weights'])}] --lambda-adv-main {weight:g}, seed {seed} "
              f"(elapsed {_fmt(time.time() - started)})", flush=True)
        if (folder / "final.pth").is_file():
            print(f"reusing {folder} (same settings; delete it to train it again)")
            continue
        flags = ["--data-dir", str(data / "gta5"), "--data-dir-target", str(data / "cityscapes"),
                 "--input-size", size, "--input-size-target", size, "--eval-size", size,
                 "--batch-size", str(args.batch_size), "--num-steps", str(args.steps),
                 "--learning-rate", str(args.learning_rate), "--pretrained", "none", "--random-seed", str(seed),
                 "--num-workers", str(args.num_workers), "--device", args.device, "--snapshot-dir", str(folder),
                 "--save-pred-every", str(args.steps), "--log-every", "10", "--random-mirror",
                 "--zero-init-residual" if args.zero_init_residual else "--no-zero-init-residual",
                 "--lambda-adv-main", str(weight), "--lambda-adv-aux", str(weight / 5),
                 "--eval-every", str(plan["every"]), "--signal-images", str(plan["signal_images"]),
                 "--source-holdout", str(plan["holdout"]), "--no-progress"]
        if (folder / "last.pth").is_file():
            flags += ["--resume", str(folder / "last.pth")]
        status = train_gta2cs_multi_drnd22.main(flags)
        if status:
            raise SystemExit(status)
    print(f"\ngrid trained in {_fmt(time.time() - started)}", flush=True)
    return summarize_grid(out, runs, plan, seeds)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    import math
    import statistics

    values = [v for v in values if math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), _sd(values)


def summarize_grid(out: Path, runs: dict[tuple[float, int], Path], plan: dict, seeds: Sequence[int]) -> dict:
    """The grid's table (mean ± std over seeds) and figure, from the runs' log.jsonl files."""
    from utils.criteria import CRITERIA, LAST, RANDOM
    from utils.select import assess, plot_report, pooled, read_snapshots, select_runs

    weights = plan["weights"]
    snaps = {key: read_snapshots(folder) for key, folder in runs.items()}
    names = [LAST, RANDOM, *(n for n in CRITERIA if any(n in assess(s)["criteria"] for s in snaps.values()))]
    per_seed, beats_within = {}, {n: 0 for n in names}
    for seed in seeds:
        within = [assess(snaps[w, seed])["criteria"] for w in weights]
        pool = pooled([(str(runs[w, seed]), snaps[w, seed]) for w in weights])["criteria"]
        for run in within:
            for n in names:
                beats_within[n] += n in run and run[n]["regret"] < run[LAST]["regret"] - 1e-12
        per_seed[seed] = {n: {"rho_within": _mean_sd([r[n].get("rho", float("nan")) for r in within if n in r])[0],
                              "regret_within": _mean_sd([r[n]["regret"] for r in within if n in r])[0],
                              "rho_pooled": pool.get(n, {}).get("rho", float("nan")),
                              "regret_pooled": pool.get(n, {}).get("regret", float("nan")),
                              "pick_pooled": pool.get(n, {}).get("run")} for n in names}
    rows = []
    for n in names:
        row = {"criterion": n}
        for field in ("rho_within", "regret_within", "rho_pooled", "regret_pooled"):
            row[field] = _mean_sd([per_seed[s][n][field] for s in seeds])
        row["beats_last_within"] = beats_within[n]
        row["beats_last_pooled"] = sum(per_seed[s][n]["regret_pooled"] < per_seed[s][LAST]["regret_pooled"] - 1e-12
                                       for s in seeds)
        rows.append(row)
    finals = {w: _mean_sd([100 * snaps[w, s][-1]["val/mIoU"] for s in seeds]) for w in weights}
    bests = {w: _mean_sd([100 * max(x["val/mIoU"] for x in snaps[w, s]) for s in seeds]) for w in weights}

    def pm(value: tuple[float, float], scale: float = 1.0, digits: int = 2) -> str:
        mean, sd = value
        return "-" if mean != mean else f"{scale * mean:.{digits}f} ± {scale * sd:.{digits}f}"

    lines = ["| criterion | rho within a run | regret within a run | beats `last` (runs) | rho over the grid | "
             "regret over the grid | beats `last` (seeds) |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        first = row["criterion"] == LAST
        within = "-" if first else f"{row['beats_last_within']}/{len(runs)}"
        pooled_beats = "-" if first else f"{row['beats_last_pooled']}/{len(seeds)}"
        lines.append(f"| `{row['criterion']}` | {pm(row['rho_within'])} | {pm(row['regret_within'], 100, 1)} | "
                     f"{within} | {pm(row['rho_pooled'])} | {pm(row['regret_pooled'], 100, 1)} | {pooled_beats} |")
    weights_table = ["| --lambda-adv-main | last snapshot's val mIoU | best snapshot's val mIoU |", "|---|---|---|"]
    weights_table += [f"| {w:g} | {pm(finals[w], 1, 1)} | {pm(bests[w], 1, 1)} |" for w in weights]
    text = "\n".join(lines)
    report = select_runs([runs[key] for key in sorted(runs)])
    figure = plot_report(report, out / "selection.png")
    summary = {"weights": list(weights), "seeds": list(seeds), "plan": plan, "per_seed": per_seed,
               "rows": [{k: (list(v) if isinstance(v, tuple) else v) for k, v in r.items()} for r in rows],
               "last_mIoU": {f"{w:g}": list(finals[w]) for w in weights},
               "best_mIoU": {f"{w:g}": list(bests[w]) for w in weights}}
    write_text_atomic(out / "selection.json", json.dumps(summary, indent=2, default=str) + "\n")
    write_text_atomic(out / "selection.md",
                      f"# Checkpoint selection on the demo's grid (seeds {', '.join(map(str, seeds))})\n\n"
                      f"{text}\n\n{chr(10).join(weights_table)}\n")
    print("\n" + text + "\n\n" + "\n".join(weights_table))
    print(f"\nwrote {out / 'selection.md'}, {out / 'selection.json'}, {figure}")
    return summary


def combine(dirs: list[Path], out: Path) -> str:
    """Multi-seed summaries of the same demo on different machines side by side: each machine's claims, the
    claims on the per-seed mean over machines, and how far a machine moves each row; to OUT/combined.{json,md}."""
    summaries = []
    for folder in dirs:
        path = folder / "summary.json"
        try:
            summaries.append(json.loads(path.read_text()))
        except (OSError, ValueError) as err:
            raise ConfigError(f"--combine {folder}: no readable summary.json there (run demo.py with several "
                              f"--seeds and --out {folder} first)") from err
    for folder, other in zip(dirs[1:], summaries[1:]):
        for key in ("seeds", "settings", "score"):
            if other[key] != summaries[0][key]:
                raise ConfigError(f"--combine {folder}: its {key} differ from those of {dirs[0]}; only runs of the "
                                  "same demo on the same seeds can be compared seed by seed")
    seeds = summaries[0]["seeds"]
    labels = [" + ".join(s["machines"]) for s in summaries]
    per_machine = [(f"({c['id']}) on {label}", c) for s, label in zip(summaries, labels) for c in s["claims"]]
    pooled = []
    for cid, text, better, worse in CLAIMS:
        mean_of = {key: [statistics.fmean(next(r for r in s["models"] if r["model"] == key)["mIoU_last"][i]
                                          for s in summaries) for i in range(len(seeds))] for key in (better, worse)}
        pooled.append({"id": cid, "statement": text, "better": better, "worse": worse, "unit": "mIoU points",
                       **judge(mean_of[better], mean_of[worse])})
    effect = []
    for i, row in enumerate(summaries[0]["models"]):
        for s, label in zip(summaries[1:], labels[1:]):
            effect.append({"model": row["model"], "title": row["title"], "machines": [label, labels[0]],
                           "seed_std": row["mIoU_last_std"],
                           **paired_difference(s["models"][i]["mIoU_last"], row["mIoU_last"], LEVEL)})
    result = {"seeds": seeds, "settings": summaries[0]["settings"], "score": summaries[0]["score"],
              "folders": [str(d) for d in dirs], "machines": labels, "claims_per_machine":
              [{"machine": label, "claims": s["claims"]} for s, label in zip(summaries, labels)],
              "claims_pooled": pooled, "machine_effect": effect}
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "combined.json", json.dumps(result, indent=2) + "\n")
    effect_table = ["| model | per-seed difference | mean | std | seed std (first machine) |", "|---|---|---|---|---|"]
    effect_table += [f"| {e['title']}: {e['machines'][0]} - {e['machines'][1]} | "
                     f"{' / '.join(f'{d:+.1f}' for d in e['differences'])} | {e['mean']:+.1f} | "
                     f"{e['std']:.1f} | {e['seed_std']:.1f} |" for e in effect]
    text = (f"Score: {result['score']}. Claims: {METHOD_NOTE}.\n\n## Each machine\n\n"
            + claims_table(per_machine, seeds) + "\n\n## Both machines: each seed's difference averaged over the "
            "machines\n\n" + claims_table([(f"({c['id']}) {c['statement']}", c) for c in pooled], seeds)
            + "\n\n## The machine's effect: a row's score on one machine minus the same seed's on the other\n\n"
            + "\n".join(effect_table))
    write_text_atomic(out / "combined.md", f"# Demo on {len(dirs)} machines, seeds {', '.join(map(str, seeds))}\n\n"
                                     f"{text}\n")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the whole demo (once per seed)."""
    args = parse_args(argv)
    grid = vars(args).pop("selection_grid")  # not one of the comparison's settings
    out = Path(args.out)
    # On a small CPU, compute threads that compete with the loader workers spin-wait for each other:
    # one thread per free core is several times faster than oversubscribing (measured on 2 cores).
    if args.combine:
        print(combine([Path(d) for d in args.combine], out))
        return 0
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) - args.num_workers))
    if grid is not None:
        selection_grid(args, out / "selection_grid", tuple(grid) or GRID_SEEDS)
        return 0
    summaries = {}
    for seed in args.seeds:
        args.seed = seed
        summaries[seed] = run_one(args, out if len(args.seeds) == 1 else out / f"seed_{seed}")
    if len(args.seeds) > 1:
        print(f"\nover seeds {', '.join(map(str, args.seeds))}:\n" + summarize_seeds(out, summaries))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
