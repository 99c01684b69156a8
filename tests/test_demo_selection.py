"""`python demo.py --selection-grid` (smoke size): the grid's runs through the student script, its table and figure."""
from __future__ import annotations

import json

import demo
import train_gta2cs_multi_drnd22 as student_script
from utils.criteria import CRITERIA


def test_quick_selection_grid_trains_each_weight_and_tables_every_criterion(tmp_path, capsys):
    out, data = tmp_path / "demo", tmp_path / "data"
    argv = ["--quick", "--selection-grid", "7", "--out", str(out), "--data-dir", str(data), "--num-workers", "0",
            "--threads", "1"]
    assert demo.main(argv) == 0
    grid = out / "selection_grid"
    weights = demo.GRID_QUICK["weights"]
    for weight in weights:
        config = json.loads((grid / f"adv{weight:g}_seed7" / "config.json").read_text())["config"]
        assert config["script"] == student_script.__name__ + ".py" and config["random_seed"] == 7
        assert config["lambda_adv_main"] == weight and config["lambda_adv_aux"] == weight / 5
        assert config["eval_every"] == demo.GRID_QUICK["every"]
        assert config["source_holdout"] == demo.GRID_QUICK["holdout"]
        assert config["signal_images"] == demo.GRID_QUICK["signal_images"]
    summary = json.loads((grid / "selection.json").read_text())
    rows = {row["criterion"]: row for row in summary["rows"]}
    assert set(rows) == {"last", "random"} | set(CRITERIA) - {"agree_teacher"}
    assert rows["oracle"]["regret_within"][0] == 0 and rows["oracle"]["rho_pooled"][0] == 1
    assert set(summary["last_mIoU"]) == {f"{w:g}" for w in weights}
    table = (grid / "selection.md").read_text()
    assert all(f"| `{name}` |" in table for name in rows)
    assert (grid / "selection.png").stat().st_size > 0
    # a second call finds the runs trained and only tables them again
    capsys.readouterr()
    assert demo.main(argv) == 0
    assert capsys.readouterr().out.count("reusing") == len(weights)
