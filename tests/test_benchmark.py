"""benchmark.py --quick: a smoke run that prints every row and writes the JSON."""
from __future__ import annotations

import json

import pytest

from tests.conftest import run_script

ROWS = [
    "adapt step (ours)", "adapt step (old way)", "adapt step speed-up",
    "distill step (ours)", "distill step (old way)", "distill step speed-up",
    "distill step (ours, bf16 autocast)", "distill step speed-up (bf16 autocast)",
    "distill step (ours, channels_last)",
    *[f"{kind} {name}" for name in ("gta5", "cityscapes", "bdd") for kind in ("loader", "label remap")],
    *[f"label {kind} {name} {what}" for name in ("gta5", "cityscapes", "bdd")
      for kind, whats in (("remap", ("(LUT)", "(old per-id)", "speed-up")),
                          ("work per item", ("(ours)", "(old way)", "speed-up")))
      for what in whats],
    "eval pipeline (ours)", "eval pipeline (old way)", "eval pipeline speed-up",
    "eval pipeline (ours) (bf16 autocast)", "eval pipeline speed-up (bf16 autocast)",
    "eval pipeline (ours) (bf16 autocast, channels_last)", "eval pipeline speed-up (bf16 autocast, channels_last)",
    "eval pipeline (ours) (folded BN)", "eval pipeline speed-up (folded BN)",
    "eval pipeline (ours) (bf16 autocast, channels_last, folded BN)",
    "eval pipeline speed-up (bf16 autocast, channels_last, folded BN)",
    *[f"{what} {role} {arch}" for role, arch in (("student", "drn_d_22"), ("teacher", "drn_d_38"))
      for what in ("infer", "params", "GFLOPs", "peak memory")],
]


def test_quick_run_prints_every_row_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = run_script("benchmark.py", "--quick", "--json", str(out), timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    from utils.cpu import cpu_info, native

    bf16 = native(cpu_info(), "bf16")  # a CPU without native bf16 skips those rows, and says so
    for row in ROWS:
        assert (row in result.stdout) == (bf16 or "bf16" not in row), f"row {row!r}"
    assert "cpu: " in result.stdout and ("bf16 rows skipped" in result.stdout) != bf16
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert all(r["min"] <= r["median"] for r in rows.values())
    assert 15.0 < rows["params student drn_d_22"]["median"] < rows["params teacher drn_d_38"]["median"]
    assert rows["GFLOPs student drn_d_22"]["median"] < rows["GFLOPs teacher drn_d_38"]["median"]


def test_bad_size_is_a_one_line_error():
    result = run_script("benchmark.py", "--size", "512")
    assert result.returncode == 2
    assert "benchmark.py: error: argument --size" in result.stderr


def test_speedup_rows_give_the_median_ratio_and_the_pessimistic_one():
    from benchmark import Table

    table = Table()
    slow = table.add("old", [4.0, 3.0, 2.0], "s/step")
    fast = table.add("ours", [1.0, 2.0, 1.5], "s/step")
    row = table.add_speedup("speed-up", slow, fast)
    assert row["median"] == 3.0 / 1.5 and row["min"] == 2.0 / 2.0 and row["unit"] == "x"
    slow = table.add("old rate", [10.0, 20.0, 15.0], "images/s")
    fast = table.add("our rate", [40.0, 60.0, 50.0], "images/s")
    row = table.add_speedup("rate speed-up", slow, fast)
    assert row["median"] == 50.0 / 15.0 and row["min"] == 40.0 / 20.0


def test_deploy_quick_gives_every_form_beside_the_roof_of_its_library_and_number_type(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (optional: pip install onnxruntime)")
    import benchmark
    from bench.deploy import ROOF_OF, runnable_forms

    out = tmp_path / "deploy.json"
    assert benchmark.main(["--deploy", "--quick", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    kept, skipped = runnable_forms()
    (roof,) = result["roofs"]  # one (net, size): its roofs, timed among its forms
    assert set(roof["roof"]) == {ROOF_OF[form] for form in kept} and all(v > 0 for v in roof["roof"].values())
    rows = {r["form"]: r for r in result["rows"]}
    assert set(rows) == set(kept) and set(result["skipped"]) == set(skipped)
    for r in rows.values():
        assert r["model"] == "student" and r["size"] == [64, 32] and r["ms"] > 0
        assert r["fps"] == pytest.approx(1000 / r["ms"]) and r["gflop_s"] == pytest.approx(r["gflops"] * r["fps"])
        assert r["roof_gflop_s"] == roof["roof"][r["roof"]]
        assert r["pct_of_roof"] == pytest.approx(100 * r["gflop_s"] / r["roof_gflop_s"])
    assert rows["onnxruntime int8"]["number_type"] == "int8" and rows["onnxruntime int8"]["roof"] == "onnxruntime int8"
    fastest = max(rows.values(), key=lambda r: r["fps"])
    assert result["speedups"][0]["fastest"] == fastest["form"]
    assert result["speedups"][0]["speedup_over_torch_fp32"] == pytest.approx(fastest["fps"] / rows["torch fp32"]["fps"])
    assert {"level", "vector_bits", "bf16", "int8_dot", "amx"} <= set(result["cpu"])
    printed = capsys.readouterr()
    assert "| student drn_d_22 | 64x32 | onnxruntime int8 |" in printed.out and "cpu: " in printed.out
    assert "student drn_d_22 64x32 onnxruntime int8: round 1/1" in printed.err  # progress: form, net, size
    assert "student drn_d_22 64x32 roof onnxruntime int8: round 1/1" in printed.err


def test_deploy_on_a_cpu_without_native_bf16_skips_those_forms_with_a_note_unless_allowed(tmp_path, capsys,
                                                                                          monkeypatch):
    import bench.deploy
    from utils import cpu

    avx2 = cpu.detect({"architecture": "x86_64", "cpu_name": "AMD EPYC 7B12", "avx2": True, "fma3": True}, "AVX2",
                      False, {}, 2)
    monkeypatch.setattr(bench.deploy, "cpu_info", lambda: avx2)
    timed: list[tuple[str, ...]] = []

    def measure(sizes, roof_n, repeats, calib_size, nets, forms):  # the forms it would time, without timing them
        timed.append(tuple(forms))
        return {"roof_n": roof_n, "threads": 2, "repeats": repeats, "rows": [], "roofs": [], "speedups": []}

    monkeypatch.setattr(bench.deploy, "measure", measure)
    out = tmp_path / "deploy.json"
    result = bench.deploy.run(quick=True, json_path=str(out))
    no_bf16 = tuple(form for form in bench.deploy.FORMS if "bf16" not in form)
    assert timed == [no_bf16] and list(result["skipped"]) == ["torch bf16+CL+foldBN"]
    written = json.loads(out.read_text())
    assert written["cpu"]["level"] == "avx2" and written["cpu"]["bf16"] is False
    assert written["cpu"]["int8_dot"] == "AVX2, no VNNI"
    assert "no native bf16" in written["skipped"]["torch bf16+CL+foldBN"]
    header = capsys.readouterr().out.split("| net |")[0]
    assert "cpu: AMD EPYC 7B12, 2 threads: AVX2 (256-bit vectors), bf16 NOT native" in header
    assert "torch bf16+CL+foldBN: skipped: this CPU has no native bf16" in header and "--allow-slow-bf16" in header
    bench.deploy.run(quick=True, allow_slow_bf16=True)  # asked for anyway: timed, nothing skipped
    assert timed[-1] == bench.deploy.FORMS


def test_roof_graphs_are_valid_matmul_models():
    pytest.importorskip("onnx", reason="onnx is not installed (optional: pip install onnx)")
    from bench.deploy import matmul_graph

    assert [n.op_type for n in matmul_graph(8, integer=True).graph.node] == ["MatMulInteger"]
    assert [n.op_type for n in matmul_graph(8, integer=False).graph.node] == ["MatMul"]


def test_an_unwritable_json_path_stops_before_any_measurement(tmp_path, monkeypatch):
    import bench.deploy
    import benchmark
    from utils.errors import ConfigError

    def measured(*args, **kwargs):
        raise AssertionError("measured before checking --json")

    monkeypatch.setattr(benchmark, "bench_steps", measured)
    monkeypatch.setattr(bench.deploy, "measure", measured)
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    for mode in ([], ["--deploy"]):
        with pytest.raises(ConfigError, match="--json"):
            benchmark.main([*mode, "--quick", "--json", str(blocker / "sub" / "bench.json")])
