"""`python demo.py --quick` end to end: the four rows, their scores, and that they came from the real scripts."""
from __future__ import annotations

import json

import pytest
import torch

import train_gta2cs_multi_drnd22 as student_script
import train_gta2cs_multi_drnd38 as teacher_script
import train_gta2cs_ts_multi as distill_script
from tests.conftest import run_script


def test_quick_demo_writes_results_for_every_model_through_the_training_scripts(tmp_path):
    out, data = tmp_path / "demo", tmp_path / "data"
    result = run_script("demo.py", "--quick", "--out", str(out), "--data-dir", str(data), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "not meaningful" in result.stdout
    summary = json.loads((out / "results.json").read_text())
    models = {row["model"]: row for row in summary["models"]}
    assert set(models) == {"source_only", "student", "teacher", "dakd"}
    for row in models.values():
        assert 0.0 <= row["mIoU"] <= 1.0 and 0.0 <= row["pixel_acc"] <= 1.0
    assert models["teacher"]["parameters"] > models["student"]["parameters"]
    for name in ("results.md", "per_class_iou.png", "qualitative.png"):
        assert (out / name).stat().st_size > 0, name

    # Each row is scored as the mean of its last 4 snapshots (here every step of 4), the last being the final
    # weights; the snapshots are gone once scored.
    for key, row in models.items():
        assert [s["step"] for s in row["snapshots"]] == [1, 2, 3, 4], key
        assert row["snapshots"][-1]["mIoU"] == row["mIoU"]
        assert row["mIoU_last"] == pytest.approx(sum(s["mIoU"] for s in row["snapshots"]) / 4)
        assert not list((out / key).glob("step_*.pth"))
    # The claims on this seed, and where it ran: the demo's process and every stage's config.json
    claims = {c["id"]: c for c in summary["claims"]}
    assert (claims["i"]["better"], claims["i"]["worse"]) == ("student", "source_only")
    assert claims["i"]["difference"] == pytest.approx(100 * (models["student"]["mIoU_last"] -
                                                             models["source_only"]["mIoU_last"]))
    assert claims["ii"]["difference_final"] == pytest.approx(100 * (models["dakd"]["mIoU"] - models["student"]["mIoU"]))
    assert summary["environment"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert summary["machine"].startswith(f"torch {torch.__version__}, CPU {summary['environment']['cpu_capability']}")
    assert all(row["trained_on"] == summary["machine"] for row in models.values())
    assert "## Claims" in (out / "results.md").read_text() and summary["settings"]["num_val"] == 8

    def config(stage: str) -> dict:
        return json.loads((out / stage / "config.json").read_text())["config"]

    # Each stage was trained by its script's main(): the logged config names the script and carries the
    # script's own constants wherever the demo did not override them.
    expected = {"source_only": student_script, "student": student_script, "teacher": teacher_script,
                "dakd": distill_script}
    for stage, script in expected.items():
        cfg = config(stage)
        assert cfg["script"] == script.__name__ + ".py"
        assert cfg["arch"] == script.ARCH and cfg["aux_layer"] == script.AUX_LAYER
        assert cfg["lambda_seg"] == script.LAMBDA_SEG
        assert cfg["pretrained"] == "none" and cfg["zero_init_residual"] is True  # the demo's from-scratch recipe
    assert config("source_only")["lambda_adv_aux"] == 0 and config("source_only")["lambda_adv_main"] == 0
    assert config("student")["lambda_adv_main"] == student_script.LAMBDA_ADV_MAIN
    dakd = config("dakd")
    assert dakd["lambda_kl"] == distill_script.LAMBDA_KL and dakd["paradigm"] == "sequential"
    assert dakd["teacher"] == str(out / "teacher" / "final.pth")

    # --oracle on the same folder reuses the four rows and adds the two diagnostic ones
    result = run_script("demo.py", "--quick", "--oracle", "--out", str(out), "--data-dir", str(data), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("reusing ") == 4
    summary = json.loads((out / "results.json").read_text())
    assert [row["model"] for row in summary["models"]] == [
        "source_only", "student", "teacher", "dakd", "oracle_teacher", "oracle_dakd"]
    assert summary["models"][4]["arch"] == "drn_d_38" and summary["settings"]["oracle"] is True
    oracle = config("oracle_teacher")
    assert oracle["script"] == "train_gta2cs_multi_drnd38.py" and oracle["source"] == "cityscapes"
    assert oracle["data_dir"] == str(data / "64x32_n16_v8_s0" / "cityscapes") and oracle["source_split"] == "train"
    assert oracle["lambda_adv_aux"] == 0 and oracle["lambda_adv_main"] == 0
    assert config("oracle_dakd")["teacher"] == str(out / "oracle_teacher" / "final.pth")
    assert config("oracle_dakd")["data_dir"] == dakd["data_dir"]  # the student still learns from the source


def test_an_out_folder_that_never_trained_a_stage_takes_new_settings(tmp_path):
    import demo
    from utils.errors import ConfigError

    out = tmp_path / "demo"
    demo.check_out_folder(demo.parse_args(["--quick", "--learning-rate", "0.5"]), out)
    assert json.loads((out / "settings.json").read_text())["learning_rate"] == 0.5
    # a run that stopped before its first stage left only settings.json: other settings may take over
    demo.check_out_folder(demo.parse_args(["--quick", "--learning-rate", "0.01"]), out)
    assert json.loads((out / "settings.json").read_text())["learning_rate"] == 0.01
    # once a stage has started, the folder belongs to its settings
    (out / "source_only").mkdir()
    with pytest.raises(ConfigError, match="other settings"):
        demo.check_out_folder(demo.parse_args(["--quick", "--learning-rate", "0.5"]), out)
