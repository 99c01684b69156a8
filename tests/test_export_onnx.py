"""export_onnx.py: dynamic-size ONNX that onnxruntime runs like PyTorch, and the model card."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import export_onnx
from model import build_seg_model
from tests.tolerances import assert_as_accurate
from utils.errors import ConfigError
from utils.flops import gflops
from utils.onnx_export import export
from utils.onnx_net import require

TINY = ["--card-size", "64,32", "--latency-size", "64,32", "--runs", "1", "--check-sizes", "64,32 40,24"]


@pytest.mark.float_sensitive
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
    # the card names the machine its latencies come from
    env = student["environment"]
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and env["torch"] == torch.__version__
    assert f"machine: torch {torch.__version__}, CPU {env['cpu_capability']}" in printed
    assert "cpu: " in printed and "running: export fp32 graphs; latency" in printed  # the machine and the choice
    assert env["cpu_features"]["vector_bits"] in (128, 256, 512) and "bf16" in env["cpu_features"]


@pytest.mark.float_sensitive
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
    small, big = gflops(net, (64, 32)), gflops(net, (128, 64))
    assert big == pytest.approx(4 * small, rel=1e-6)


def test_missing_optional_dependency_is_a_clear_config_error():
    with pytest.raises(ConfigError, match="pip install onnx onnxruntime"):
        require("onnxruntime_that_does_not_exist")


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
        export(build_seg_model("drn_d_22").eval(), tmp_path / "net.onnx")
    assert list(tmp_path.iterdir()) == []


# --- int8 -----------------------------------------------------------------------------------------
def int8_flags(root: Path) -> list[str]:
    return ["--int8", "--calib-data", str(root / "cityscapes" / "leftImg8bit" / "train"), "--calib-count", "4",
            "--input-size", "64,32"]


def test_int8_graph_beside_out_is_quantised_per_channel_and_both_graphs_are_scored(checkpoint, synthetic_root,
                                                                                   tmp_path, capsys):
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (optional: pip install onnx)")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (optional: pip install onnxruntime)")
    out = tmp_path / "student.onnx"
    report = export_onnx.main(["--restore-from", str(checkpoint), "--out", str(out), *int8_flags(synthetic_root),
                               "--eval-data", str(synthetic_root / "cityscapes"), *TINY])
    int8 = tmp_path / "student.int8.onnx"
    assert report["int8"] == str(int8) and report["quantization"]["calib_images"] == 4
    assert int8.stat().st_size < 0.35 * out.stat().st_size  # int8 weights: a quarter of the bytes, and scales
    graph = onnx.load(str(int8)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    scales = {t.name: t for t in graph.initializer}
    weight_scales = [scales[n.input[1]] for n in graph.node
                     if n.op_type == "DequantizeLinear" and n.input[0] in scales
                     and scales[n.input[0]].data_type == onnx.TensorProto.INT8
                     and len(scales[n.input[0]].dims) == 4]
    assert weight_scales and all(len(s.dims) == 1 and s.dims[0] > 1 for s in weight_scales)  # one per channel
    scored = report["cards"][0]["eval"]
    assert scored["fp32"]["num_images"] == scored["int8"]["num_images"] == 4
    assert 0 <= scored["int8"]["mIoU"] <= 100 and 0 <= scored["fp32"]["mIoU"] <= 100
    assert scored["int8_minus_fp32"] == pytest.approx(scored["int8"]["mIoU"] - scored["fp32"]["mIoU"])
    assert report["cards"][0]["latency"]["onnxruntime_int8_ms"] > 0
    printed = capsys.readouterr().out
    assert "student.int8.onnx" in printed and "int8 - fp32" in printed


def test_int8_calibration_input_is_the_evaluation_input(synthetic_root):
    from dataset.decode import read_image
    from dataset.transforms import EvalTransform
    from utils.quantize import preprocess

    image = sorted((synthetic_root / "cityscapes" / "leftImg8bit" / "val").rglob("*.png"))[0]
    expected, _ = EvalTransform((40, 24))(read_image(image))
    got = preprocess(image, (40, 24))
    assert got.shape == (1, 3, 24, 40) and torch.equal(torch.from_numpy(got[0]), expected)


def test_int8_without_calibration_images_fails_before_the_export(tmp_path):
    out = tmp_path / "student.onnx"
    with pytest.raises(ConfigError, match="--calib-data"):
        export_onnx.main(["--arch", "drn_d_22", "--out", str(out), "--int8", "--no-latency"])
    (tmp_path / "empty").mkdir()
    from utils.errors import DatasetError

    with pytest.raises(DatasetError, match=r"--calib-data .*empty: no images"):
        export_onnx.main(["--arch", "drn_d_22", "--out", str(out), "--int8", "--calib-data", str(tmp_path / "empty"),
                          "--no-latency"])
    assert not out.exists()


def test_int8_path_sits_beside_the_fp32_graph():
    from utils.quantize import int8_path

    assert int8_path("runs/x/student.onnx") == Path("runs/x/student.int8.onnx")


@pytest.mark.float_sensitive
def test_logits_graph_matches_main_logits_and_refuses_the_aux_head(checkpoint, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (optional: pip install onnxruntime)")
    report = export_onnx.main(["--restore-from", str(checkpoint), "--out", str(tmp_path / "s.onnx"), "--logits",
                               "--no-latency", *TINY])
    assert report["max_abs_diff"] <= 1e-4  # checked against SegNet.main_logits
    from utils.onnx_net import ort_session

    x = torch.randn(1, 3, 32, 64)
    got = ort_session(tmp_path / "s.onnx").run(None, {"image": x.numpy()})[0]
    from utils.evaluate import load_net

    net = load_net(str(checkpoint))
    with torch.no_grad():
        expected = net.main_logits(x)
        exact = net.double().main_logits(x.double())
    assert_as_accurate(torch.from_numpy(got), expected, exact, what="onnxruntime logits")
    with pytest.raises(ConfigError, match="--logits .*--with-aux"):
        export_onnx.main(["--restore-from", str(checkpoint), "--out", str(tmp_path / "t.onnx"), "--logits",
                          "--with-aux", "--no-latency", *TINY])


# --- every input checked before anything is written -------------------------------------------------
def old_outputs(folder: Path) -> dict[Path, bytes]:
    """An earlier export's three files (graph, int8 graph, JSON), which a failed run must leave as they are."""
    files = {folder / "student.onnx": b"earlier graph", folder / "student.int8.onnx": b"earlier int8 graph",
             folder / "card.json": b"{}"}
    for path, data in files.items():
        path.write_bytes(data)
    return files


def test_a_corrupt_calibration_image_stops_the_export_before_anything_is_written(synthetic_root, tmp_path):
    from utils.errors import DatasetError

    calib = tmp_path / "calib"
    calib.mkdir()
    for image in sorted((synthetic_root / "cityscapes" / "leftImg8bit" / "train").rglob("*.png"))[:3]:
        (calib / image.name).write_bytes(image.read_bytes())
    (calib / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    old = old_outputs(tmp_path)
    with pytest.raises(DatasetError, match="zz_corrupt.png"):
        export_onnx.main(["--arch", "drn_d_22", "--out", str(tmp_path / "student.onnx"), "--int8", "--calib-data",
                          str(calib), "--calib-count", "4", "--json", str(tmp_path / "card.json"), *TINY])
    assert {p: p.read_bytes() for p in old} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib", "card.json", "student.int8.onnx", "student.onnx"]


def test_a_missing_eval_data_stops_the_export_before_anything_is_written(synthetic_root, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (optional: pip install onnxruntime)")
    from utils.errors import DatasetError

    old = old_outputs(tmp_path)
    with pytest.raises(DatasetError, match="nowhere"):
        export_onnx.main(["--arch", "drn_d_22", "--out", str(tmp_path / "student.onnx"), *int8_flags(synthetic_root),
                          "--eval-data", str(tmp_path / "nowhere"), *TINY])
    assert {p: p.read_bytes() for p in old} == old


def test_a_failure_after_the_export_leaves_every_earlier_output_as_it_was(synthetic_root, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (optional: pip install onnxruntime)")

    def scoring_fails(*args, **kwargs):
        raise ConfigError("the scoring failed")

    monkeypatch.setattr(export_onnx, "score_graphs", scoring_fails)
    old = old_outputs(tmp_path)
    with pytest.raises(ConfigError, match="the scoring failed"):
        export_onnx.main(["--arch", "drn_d_22", "--out", str(tmp_path / "student.onnx"), *int8_flags(synthetic_root),
                          "--eval-data", str(synthetic_root / "cityscapes"), "--json", str(tmp_path / "card.json"),
                          "--no-latency", *TINY])
    assert {p: p.read_bytes() for p in old} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.json", "student.int8.onnx", "student.onnx"]


@pytest.mark.parametrize("clash", ["--out", "--json", "--int8 graph"])
def test_an_output_that_is_an_input_or_another_output_is_refused(checkpoint, synthetic_root, tmp_path, clash):
    ckpt = tmp_path / "final.pth"
    ckpt.write_bytes(checkpoint.read_bytes())
    out, json_path = tmp_path / "student.onnx", tmp_path / "card.json"
    if clash == "--out":
        out = ckpt  # the trained checkpoint would be overwritten
    elif clash == "--json":
        json_path = out
    else:
        out = tmp_path / "final.onnx"
        ckpt.rename(tmp_path / "final.int8.onnx")  # --out's int8 graph would land on the checkpoint
        ckpt = tmp_path / "final.int8.onnx"
    before = ckpt.read_bytes()
    with pytest.raises(ConfigError, match="the same file as"):
        export_onnx.main(["--restore-from", str(ckpt), "--out", str(out), "--json", str(json_path),
                          *int8_flags(synthetic_root), *TINY])
    assert ckpt.read_bytes() == before
