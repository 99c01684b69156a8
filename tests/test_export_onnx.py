"""export_onnx.py: dynamic-size ONNX that onnxruntime runs like PyTorch, and the model card."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import export_onnx
from model import build_seg_model, save_final
from utils.errors import ConfigError

TINY = ["--card-size", "64,32", "--latency-size", "64,32", "--runs", "1", "--check-sizes", "64,32 40,24"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "final.pth"
    save_final(str(path), build_seg_model("drn_d_22"))
    return path


def test_onnx_matches_pytorch_at_several_sizes(checkpoint, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (optional: pip install onnxruntime)")
    out = tmp_path / "student.onnx"
    card = tmp_path / "card.json"
    report = export_onnx.main(["--restore-from", str(checkpoint), "--out", str(out), "--json", str(card), *TINY])
    assert out.is_file() and report["max_abs_diff"] <= 1e-4
    assert {tuple(c["size"]) for c in report["check"]} == {(64, 32), (40, 24)}  # 40x24: not a multiple of 16
    data = json.loads(card.read_text())
    student = data["cards"][0]
    assert student["arch"] == "drn_d_22" and student["params"] > student["params_inference"] > 1e7
    assert student["gflops"] > 0 and student["latency"]["torch_ms"] > 0 and student["latency"]["onnxruntime_ms"] > 0
    printed = capsys.readouterr().out
    assert "max abs diff" in printed and "GFLOPs" in printed


def test_with_aux_exports_both_heads_and_compares_a_teacher(checkpoint, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (optional: pip install onnxruntime)")
    report = export_onnx.main(["--restore-from", str(checkpoint), "--out", str(tmp_path / "s.onnx"), "--with-aux",
                               "--compare-arch", "drn_d_38", "--no-latency", *TINY])
    assert {c["output"] for c in report["check"]} == {"main", "aux"}
    student, teacher = report["cards"]
    assert teacher["arch"] == "drn_d_38" and teacher["params"] > student["params"]
    assert teacher["gflops"] > student["gflops"]


def test_gflops_grow_with_the_pixel_count():
    net = build_seg_model("drn_d_22")
    small, big = export_onnx.gflops(net, (64, 32)), export_onnx.gflops(net, (128, 64))
    assert big == pytest.approx(4 * small, rel=1e-6)


def test_missing_optional_dependency_is_a_clear_config_error():
    with pytest.raises(ConfigError, match="pip install onnx onnxruntime"):
        export_onnx.require("onnxruntime_that_does_not_exist")


def test_no_checkpoint_and_no_arch_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="--restore-from"):
        export_onnx.main(["--out", str(tmp_path / "x.onnx"), "--no-check", "--no-latency"])


def test_missing_checkpoint_is_a_checkpoint_error(tmp_path):
    from utils.errors import CheckpointError

    with pytest.raises(CheckpointError, match="no such file"):
        export_onnx.main(["--restore-from", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "x.onnx"),
                          "--no-check"])


def test_a_failed_export_names_the_opset_and_keeps_the_old_file(tmp_path):
    pytest.importorskip("onnx", reason="onnx is not installed (optional: pip install onnx)")
    out = tmp_path / "net.onnx"
    out.write_bytes(b"an earlier export")
    with pytest.raises(ConfigError, match="--opset 99 failed"):
        export_onnx.main(["--arch", "drn_d_22", "--out", str(out), "--opset", "99", "--no-check", "--no-latency"])
    assert out.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx"]


def test_a_missing_compare_checkpoint_is_named_before_anything_is_written(tmp_path):
    from utils.errors import CheckpointError

    out = tmp_path / "net.onnx"
    with pytest.raises(CheckpointError, match=r"^--compare .*nope\.pth: no such file"):
        export_onnx.main(["--arch", "drn_d_22", "--out", str(out), "--compare", str(tmp_path / "nope.pth"),
                          "--no-check", "--no-latency"])
    assert not out.exists()


def test_an_interrupted_export_leaves_no_partial_file(tmp_path, monkeypatch):
    pytest.importorskip("onnx", reason="onnx is not installed (optional: pip install onnx)")

    def interrupted(model, args, f, **kwargs):
        Path(f).write_bytes(b"half an export")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.onnx, "export", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_onnx.export(build_seg_model("drn_d_22").eval(), tmp_path / "net.onnx")
    assert list(tmp_path.iterdir()) == []
