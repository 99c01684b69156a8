"""`python -m utils.select`: picks, rank correlations and regret from log.jsonl files, and its errors."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
from scipy import stats

from tests.conftest import run_script
from utils.cli import run_cli
from utils.criteria import CRITERIA, SELECT_CHOICES, checkpoint_name, improves
from utils.select import main, read_snapshots, select_runs

STEPS = [10, 20, 30, 40, 50]
RUN_A = {
    "val/mIoU": [0.30, 0.40, 0.35, 0.38, 0.33],
    "sel/entropy": [0.50, 0.30, 0.30, 0.35, 0.40],  # lower is better; steps 20 and 30 tie: the later wins
    "sel/snd_main": [3.0, 3.5, 3.2, 3.4, 3.1],
    "sel/source_mIoU": [0.50, "nan", 0.60, 0.55, 0.52],  # a non-finite value, as the logger writes it
    "sel/diversity": [None, 0.8, 0.7, 0.9, 0.6],  # absent at the first validation
}
RUN_B = {
    "val/mIoU": [0.20, 0.25, 0.31, 0.29, 0.30],
    "sel/entropy": [0.6, 0.5, 0.45, 0.40, 0.35],
    "sel/snd_main": [3.3, 3.1, 3.0, 3.2, 3.6],
    "sel/source_mIoU": [0.40, 0.45, 0.50, 0.49, 0.48],
    "sel/diversity": [0.5, 0.6, 0.7, 0.8, 0.9],
}


def write_run(folder: Path, series: dict, split_step: int | None = None) -> Path:
    """A log.jsonl with loss records every 5 steps and one validation record per step of STEPS
    (at `split_step`, the oracle and the signals come in two records, as two log calls would write them)."""
    folder.mkdir(parents=True)
    lines = []
    for i, step in enumerate(STEPS):
        lines.append({"step": step - 5, "time": 0.0, "phase": "adapt", "total": 1.0, "lr": 0.01})
        record = {k: v[i] for k, v in series.items() if v[i] is not None}
        if step == split_step:
            lines.append({"step": step, "time": 0.0, "val/mIoU": record.pop("val/mIoU")})
        lines.append({"step": step, "time": 0.0, **record, "sel/seconds": 0.5})
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


@pytest.fixture
def runs(tmp_path):
    return write_run(tmp_path / "a", RUN_A, split_step=30), write_run(tmp_path / "b", RUN_B)


def _finite_pairs(values, truth, sign):
    pairs = [(sign * v, t) for v, t in zip(values, truth) if isinstance(v, float)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def test_snapshots_are_merged_by_step(runs):
    snaps = read_snapshots(runs[0])
    assert [s["step"] for s in snaps] == STEPS
    assert snaps[2]["val/mIoU"] == 0.35 and snaps[2]["sel/entropy"] == 0.30  # two records of step 30
    assert math.isnan(snaps[1]["sel/source_mIoU"]) and math.isnan(snaps[0]["sel/diversity"])
    assert math.isnan(snaps[0]["sel/agree_heads"])  # never logged


def test_picks_regret_and_rank_correlations(runs):
    report = select_runs([runs[0]])
    rows = report["runs"][0]["criteria"]
    truth = RUN_A["val/mIoU"]
    best = max(truth)
    assert report["runs"][0]["best_mIoU"] == best
    assert rows["last"]["step"] == 50 and rows["last"]["regret"] == pytest.approx(best - 0.33)
    assert rows["random"]["regret"] == pytest.approx(best - statistics.fmean(truth))
    assert rows["oracle"]["step"] == 20 and rows["oracle"]["regret"] == 0
    assert rows["entropy"]["step"] == 30 and rows["entropy"]["direction"] == "min"  # the later of a tie
    assert rows["entropy"]["regret"] == pytest.approx(best - 0.35)
    assert rows["snd_main"]["step"] == 20 and rows["snd_main"]["regret"] == 0
    assert rows["source_mIoU"]["step"] == 30 and rows["diversity"]["step"] == 40
    assert "agree_heads" not in rows and "agree_teacher" not in rows  # not logged: not reported
    # rho and tau: scipy's, on the value times the direction, over the snapshots where both are finite
    for name, sign in (("entropy", -1), ("snd_main", 1), ("source_mIoU", 1), ("diversity", 1)):
        xs, ys = _finite_pairs([v if isinstance(v, float) else None for v in RUN_A[CRITERIA[name].key]], truth, sign)
        assert rows[name]["n"] == len(xs)
        assert rows[name]["rho"] == pytest.approx(stats.spearmanr(xs, ys).statistic)
        assert rows[name]["tau"] == pytest.approx(stats.kendalltau(xs, ys).statistic)
    assert rows["entropy"]["rho"] == pytest.approx(stats.spearmanr(RUN_A["sel/entropy"], truth).statistic * -1)


def test_over_runs_and_pooled(runs):
    report = select_runs(list(runs))
    per_run = report["runs"]
    over = report["over_runs"]
    regrets = [r["criteria"]["snd_main"]["regret"] for r in per_run]
    assert over["snd_main"]["regret"]["mean"] == pytest.approx(statistics.fmean(regrets))
    assert over["snd_main"]["regret"]["std"] == pytest.approx(statistics.stdev(regrets))
    lasts = [r["criteria"]["last"]["regret"] for r in per_run]
    assert over["snd_main"]["beats_last"] == sum(m < la for m, la in zip(regrets, lasts))
    assert over["oracle"]["regret"]["mean"] == 0
    pooled = report["pooled"]
    assert pooled["snapshots"] == 10 and pooled["best_mIoU"] == 0.40
    assert pooled["criteria"]["snd_main"]["run"] == str(runs[1]) and pooled["criteria"]["snd_main"]["step"] == 50
    assert pooled["criteria"]["last"]["mIoU"] == pytest.approx((0.33 + 0.30) / 2)


def test_cli_text_json_and_figure(runs, tmp_path, capsys):
    out_json, figure = tmp_path / "out" / "select.json", tmp_path / "out" / "select.png"
    assert run_cli(main, [*map(str, runs), "--json", str(out_json), "--figure", str(figure)]) == 0
    text = capsys.readouterr().out
    assert "== over 2 runs" in text and "snd_main" in text and f"wrote {figure}" in text
    data = json.loads(out_json.read_text())
    assert data["runs"][0]["criteria"]["entropy"]["step"] == 30
    assert data["criteria"]["entropy"] == {"key": "sel/entropy", "direction": "min", "label_free": True}
    assert figure.stat().st_size > 10_000 and figure.read_bytes()[:4] == b"\x89PNG"
    assert run_cli(main, [str(runs[0]), "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"][0]["criteria"]["random"]["step"] is None


@pytest.mark.parametrize("case", ["missing", "no_log", "no_snapshot", "not_json", "file"])
def test_cli_errors_are_one_line(case, runs, tmp_path, capsys):
    target = tmp_path / case
    expected = {"missing": "no such folder", "no_log": "no log.jsonl", "no_snapshot": "no snapshot",
                "not_json": "line 2 is not JSON", "file": "not a folder"}[case]
    if case == "no_log":
        target.mkdir()
    elif case == "no_snapshot":
        target.mkdir()
        (target / "log.jsonl").write_text(json.dumps({"step": 1, "total": 1.0}) + "\n")
    elif case == "not_json":
        target.mkdir()
        (target / "log.jsonl").write_text(json.dumps({"step": 1, "val/mIoU": 0.1}) + "\n{oops\n")
    elif case == "file":
        target.write_text("x")
    out_json = tmp_path / "never.json"
    assert run_cli(main, [str(runs[0]), str(target), "--json", str(out_json)]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1
    assert not out_json.exists()


def test_figure_needs_the_truth(tmp_path, capsys):
    run = write_run(tmp_path / "nolabels", {k: v for k, v in RUN_B.items() if k != "val/mIoU"})
    assert run_cli(main, [str(run)]) == 0  # selection without target labels: picks, no regret
    text = capsys.readouterr().out
    assert "snd_main" in text and "oracle" not in text.split("== over")[0]
    assert run_cli(main, [str(run), "--json", "-"]) == 0
    rows = json.loads(capsys.readouterr().out)["runs"][0]["criteria"]
    assert rows["snd_main"]["step"] == 50 and rows["snd_main"]["mIoU"] is None and rows["snd_main"]["regret"] is None
    figure = tmp_path / "f.png"
    assert run_cli(main, [str(run), "--figure", str(figure)]) == 2
    assert "no snapshot holds both a signal and val/mIoU" in capsys.readouterr().err
    assert not figure.exists()


def test_module_entry_point(runs, tmp_path):
    ok = run_script("-m", "utils.select", str(runs[0]), timeout=120)
    assert ok.returncode == 0 and "entropy" in ok.stdout, ok.stderr
    bad = run_script("-m", "utils.select", str(tmp_path / "nope"), timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip() == f"python -m utils.select: error: RUN_DIR {tmp_path / 'nope'}: no such folder"


def test_criteria_rule_and_names():
    entropy, snd = CRITERIA["entropy"], CRITERIA["snd_main"]
    assert improves(entropy, 0.2, 0.3) and improves(entropy, 0.3, 0.3) and not improves(entropy, 0.4, 0.3)
    assert improves(snd, 3.0, None) and not improves(snd, math.nan, 1.0) and improves(snd, 1.0, math.nan)
    assert SELECT_CHOICES[0] == "last" and "oracle" in SELECT_CHOICES
    assert checkpoint_name("oracle") == "selected_oracle.pth" and checkpoint_name("last") == "final.pth"
    with pytest.raises(ValueError, match="unknown criterion"):
        checkpoint_name("best")


def test_a_synthia_runs_truth_is_its_16_class_miou(tmp_path):
    """A log holding val/mIoU16 (a SYNTHIA-trained run) is judged by it, not by the 19-class val/mIoU."""
    series = {"val/mIoU": [0.30, 0.20, 0.25, 0.21, 0.22], "val/mIoU16": [0.30, 0.40, 0.35, 0.38, 0.33],
              "sel/entropy": [0.50, 0.30, 0.30, 0.35, 0.40]}
    report = select_runs([write_run(tmp_path / "synthia", series)])
    run = report["runs"][0]
    assert run["truth"] == "val/mIoU16" and run["best_mIoU"] == 0.40
    assert run["criteria"]["oracle"]["step"] == 20 and run["criteria"]["last"]["regret"] == pytest.approx(0.07)
    assert run["criteria"]["entropy"]["mIoU"] == 0.35  # its pick, step 30, scored by the 16 classes
    assert select_runs([write_run(tmp_path / "gta5", {k: v for k, v in series.items() if k != "val/mIoU16"})]
                       )["runs"][0]["truth"] == "val/mIoU"
