"""utils/claims.py and the demo's claim statistics: paired per-seed differences, their Student-t interval,
the verdict, and the demo's summaries over seeds and over machines, against values computed by hand."""
from __future__ import annotations

import json
import math

import pytest

import demo
from utils.claims import paired_difference, t_quantile, verdict
from utils.errors import ConfigError

T_975_DF4 = 2.7764451051977987  # Student-t 0.975 quantile, 4 degrees of freedom (tables give 2.776)


def test_t_quantile_matches_the_tables():
    assert t_quantile(0.975, 4) == pytest.approx(T_975_DF4, abs=1e-9)
    assert t_quantile(0.975, 1) == pytest.approx(12.7062047, abs=1e-6)
    assert t_quantile(0.5, 7) == pytest.approx(0.0, abs=1e-12)


def test_paired_difference_by_hand():
    # differences 2, 3, 2, 3, 4: mean 2.8, squared deviations 0.64 + 0.04 + 0.64 + 0.04 + 1.44 = 2.8,
    # variance 2.8 / 4 = 0.7, half width t(0.975, 4) * sqrt(0.7) / sqrt(5)
    stats = paired_difference([5, 6, 4, 7, 8], [3, 3, 2, 4, 4])
    assert stats["differences"] == [2, 3, 2, 3, 4] and stats["n"] == 5
    assert stats["mean"] == pytest.approx(2.8) and stats["std"] == pytest.approx(math.sqrt(0.7))
    half = T_975_DF4 * math.sqrt(0.7) / math.sqrt(5)
    assert half == pytest.approx(1.03885, abs=1e-5)
    assert stats["interval"] == pytest.approx([2.8 - half, 2.8 + half])
    assert stats["level"] == 0.95 and "Student-t" in stats["method"]
    assert verdict(stats) == "holds"


def test_verdicts_reversed_undecided_and_one_seed():
    assert verdict(paired_difference([1, 2, 1, 1], [4, 4, 4, 4])) == "reversed"   # -3, -2, -3, -3
    undecided = paired_difference([1, 3, 1, 3, 1], [2, 2, 2, 2, 2])               # -1, +1, -1, +1, -1
    assert undecided["mean"] == pytest.approx(-0.2) and verdict(undecided) == "undecided"
    one = paired_difference([3.5], [1.0])
    assert one["mean"] == 2.5 and one["std"] is None and one["interval"] is None and verdict(one) == "one seed"
    # a wider level gives a wider interval around the same mean
    narrow, wide = (paired_difference([5, 6, 4, 7, 8], [3, 3, 2, 4, 4], level) for level in (0.8, 0.99))
    assert wide["interval"][0] < narrow["interval"][0] < 2.8 < narrow["interval"][1] < wide["interval"][1]


def test_unpaired_or_empty_scores_are_refused():
    with pytest.raises(ValueError, match="one value per seed"):
        paired_difference([1, 2], [1])
    with pytest.raises(ValueError, match="no seed"):
        paired_difference([], [])


SOURCE = [0.10, 0.12, 0.11, 0.13, 0.09]
STUDENT = [0.12, 0.15, 0.13, 0.16, 0.13]    # student - source: +2, +3, +2, +3, +4 points
DAKD = [0.11, 0.16, 0.12, 0.17, 0.12]       # dakd - student: -1, +1, -1, +1, -1 points
SEEDS = [11, 12, 13, 14, 15]


def fake_seed(seed: int, i: int, machine: str, dakd_shift: float = 0.0) -> dict:
    """A per-seed results.json as demo.summarize writes it, with the scores above."""
    scores = {"source_only": SOURCE[i], "student": STUDENT[i], "teacher": 0.2, "dakd": DAKD[i] + dakd_shift}
    return {"settings": {"seed": seed, "steps": 300}, "score": "mean mIoU of the last 4 snapshots", "machine": machine,
            "models": [{"model": k, "title": k, "mIoU_last": v, "mIoU": v + 0.01 * (k == "dakd"), "pixel_acc": 0.5,
                        "trained_on": machine} for k, v in scores.items()]}


def test_summary_over_seeds_has_each_claims_paired_statistics(tmp_path):
    summaries = {s: fake_seed(s, i, "CPU AVX512") for i, s in enumerate(SEEDS)}
    text = demo.summarize_seeds(tmp_path, summaries)
    summary = json.loads((tmp_path / "summary.json").read_text())
    claims = {c["id"]: c for c in summary["claims"]}
    first, second = claims["i"], claims["ii"]
    assert (first["better"], first["worse"]) == ("student", "source_only")
    assert first["differences"] == pytest.approx([2, 3, 2, 3, 4]) and first["mean"] == pytest.approx(2.8)
    assert first["interval"] == pytest.approx([1.761149, 3.838851], abs=1e-5) and first["verdict"] == "holds"
    # -1, +1, -1, +1, -1: mean -0.2, variance (3 * 0.64 + 2 * 1.44) / 4 = 1.2
    assert second["mean"] == pytest.approx(-0.2) and second["std"] == pytest.approx(math.sqrt(1.2))
    assert second["interval"] == pytest.approx([-0.2 - 1.360175, -0.2 + 1.360175], abs=1e-5)
    assert second["verdict"] == "undecided"
    # the final weights' claim: the fake DAKD row is one point higher there on every seed
    assert second["final"]["differences"] == pytest.approx([0, 2, 0, 2, 0])
    assert summary["machines"] == ["CPU AVX512"] and summary["seeds"] == SEEDS
    rows = {r["model"]: r for r in summary["models"]}
    assert rows["student"]["mIoU_last"] == pytest.approx([12, 15, 13, 16, 13])
    assert rows["student"]["mIoU_last_mean"] == pytest.approx(13.8)
    row = "| (i) adaptation beats source-only | +2.0 / +3.0 / +2.0 / +3.0 / +4.0 | +2.8 | 0.8 | [+1.8, +3.8] | holds |"
    assert row in text
    assert "mixed" not in text
    assert (tmp_path / "summary.md").read_text().count("| (ii)") == 2


def test_a_summary_over_seeds_run_on_different_machines_says_so(tmp_path):
    summaries = {s: fake_seed(s, i, "CPU AVX512" if i else "CPU AVX2") for i, s in enumerate(SEEDS)}
    assert "**mixed machines**" in demo.summarize_seeds(tmp_path, summaries)
    assert json.loads((tmp_path / "summary.json").read_text())["machines"] == ["CPU AVX2", "CPU AVX512"]


def test_combine_pools_the_machines_per_seed_and_measures_the_machines_effect(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, machine, shift in ((a, "CPU AVX512", 0.0), (b, "CPU AVX2", 0.02)):
        folder.mkdir()
        demo.summarize_seeds(folder, {s: fake_seed(s, i, machine, shift) for i, s in enumerate(SEEDS)})
    assert demo.main(["--combine", str(a), str(b), "--out", str(tmp_path / "both")]) == 0
    combined = json.loads((tmp_path / "both" / "combined.json").read_text())
    assert combined["machines"] == ["CPU AVX512", "CPU AVX2"]
    on_b = {c["id"]: c for c in combined["claims_per_machine"][1]["claims"]}
    assert on_b["ii"]["differences"] == pytest.approx([1, 3, 1, 3, 1])
    pooled = {c["id"]: c for c in combined["claims_pooled"]}
    # (ii): each seed's difference averaged over the machines: 0, 2, 0, 2, 0 -> mean 0.8, variance 1.2
    assert pooled["ii"]["differences"] == pytest.approx([0, 2, 0, 2, 0]) and pooled["ii"]["mean"] == pytest.approx(0.8)
    assert pooled["ii"]["interval"] == pytest.approx([0.8 - 1.360175, 0.8 + 1.360175], abs=1e-5)
    assert pooled["ii"]["verdict"] == "undecided" and pooled["i"]["verdict"] == "holds"
    effect = {e["model"]: e for e in combined["machine_effect"]}
    assert effect["dakd"]["differences"] == pytest.approx([2] * 5) and effect["dakd"]["std"] == pytest.approx(0)
    assert effect["student"]["mean"] == pytest.approx(0) and effect["dakd"]["machines"] == ["CPU AVX2", "CPU AVX512"]
    assert effect["student"]["seed_std"] == pytest.approx(json.loads((a / "summary.json").read_text())[
        "models"][1]["mIoU_last_std"])
    text = (tmp_path / "both" / "combined.md").read_text()
    assert "(ii) on CPU AVX2 | +1.0 / +3.0 / +1.0 / +3.0 / +1.0 | +1.8 |" in text


def test_combine_refuses_other_seeds_and_missing_summaries(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    demo.summarize_seeds(a, {s: fake_seed(s, i, "x") for i, s in enumerate(SEEDS)})
    demo.summarize_seeds(b, {s + 1: fake_seed(s + 1, i, "y") for i, s in enumerate(SEEDS)})
    with pytest.raises(ConfigError, match=r"--combine .*b: its seeds differ"):
        demo.main(["--combine", str(a), str(b), "--out", str(tmp_path / "c")])
    with pytest.raises(ConfigError, match=r"--combine .*nowhere: no readable summary.json"):
        demo.main(["--combine", str(a), str(tmp_path / "nowhere"), "--out", str(tmp_path / "c")])
    with pytest.raises(SystemExit):
        demo.parse_args(["--combine", str(a)])
    with pytest.raises(SystemExit):
        demo.parse_args(["--score-last", "13"])
