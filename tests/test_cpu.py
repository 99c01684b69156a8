"""utils/cpu.py: what a CPU runs fast, the overrides that emulate a smaller one, and no silent slow bf16."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, tiny_train_args
from utils import cpu
from utils.errors import ConfigError

AVX2_CAPS = {"architecture": "x86_64", "cpu_name": "AMD EPYC 7B12", "avx2": True, "fma3": True}
ZEN4_CAPS = {**AVX2_CAPS, "cpu_name": "AMD EPYC 9B14", "avx512_f": True, "avx512_bw": True, "avx512_vl": True,
             "avx512_dq": True, "avx512_vnni": True, "avx512_bf16": True}
SKYLAKE_CAPS = {**AVX2_CAPS, "cpu_name": "Xeon Gold 6148", "avx512_f": True, "avx512_bw": True,
                "avx512_vl": True, "avx512_dq": True}
SAPPHIRE_CAPS = {**ZEN4_CAPS, "cpu_name": "Xeon Platinum 8480", "amx_tile": True, "amx_bf16": True,
                 "amx_int8": True}
EMULATE_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def describe(caps, aten="AVX512", env=None, mkldnn_bf16=True):
    return cpu.detect(caps, aten, mkldnn_bf16, env or {}, 2)


@pytest.mark.parametrize("caps, level, bits, bf16, int8, amx", [
    (AVX2_CAPS, "avx2", 256, False, "AVX2, no VNNI", False),
    (SKYLAKE_CAPS, "avx512", 512, False, "AVX-512BW, no VNNI", False),
    (ZEN4_CAPS, "avx512_bf16", 512, True, "VNNI", False),
    (SAPPHIRE_CAPS, "amx", 512, True, "VNNI", True),
])
def test_each_kind_of_cpu_is_described_by_what_it_runs_natively(caps, level, bits, bf16, int8, amx):
    info = describe(caps, aten="AVX2" if bits == 256 else "AVX512")
    assert (info.level, info.vector_bits, info.bf16, info.int8_dot, info.amx) == (level, bits, bf16, int8, amx)
    assert cpu.native(info, "bf16") == bf16 and cpu.native(info, "int8") and cpu.native(info, "fp32")


def test_the_overrides_make_an_avx512_cpu_answer_as_an_avx2_one_except_for_onnxruntime():
    info = describe(ZEN4_CAPS, aten="AVX2", env=EMULATE_AVX2, mkldnn_bf16=False)
    avx2 = describe(AVX2_CAPS, aten="AVX2", mkldnn_bf16=False)
    same = ("level", "vector_bits", "bf16", "int8_dot", "amx")
    assert [getattr(info, k) for k in same] == [getattr(avx2, k) for k in same]
    assert info.onnxruntime_level == "avx512_bf16" and avx2.onnxruntime_level == "avx2"
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in info.summary() and "onnxruntime has no such switch" in info.summary()
    # either switch alone caps the answer; oneDNN's older name counts too
    assert describe(ZEN4_CAPS, aten="AVX2").level == "avx2"
    assert describe(ZEN4_CAPS, env={"DNNL_MAX_CPU_ISA": "avx512_core_vnni"}).level == "avx512_vnni"
    assert not describe(ZEN4_CAPS, env={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}).bf16


def test_bf16_on_a_cpu_without_it_stops_naming_the_faster_choice_unless_allowed(monkeypatch):
    monkeypatch.setattr(cpu, "cpu_info", lambda: describe(AVX2_CAPS, aten="AVX2", mkldnn_bf16=False))
    with pytest.raises(ConfigError, match=r"--amp bf16: this CPU \(AVX2\) has no native bf16.*--amp off \(fp32\).*"
                                          r"--allow-slow-bf16"):
        cpu.check_amp(torch.device("cpu"), "bf16", False)
    with pytest.raises(ConfigError, match="the int8 graph"):
        cpu.check_amp(torch.device("cpu"), "bf16", False, deploys=True)
    cpu.check_amp(torch.device("cpu"), "bf16", True)       # asked for anyway
    cpu.check_amp(torch.device("cpu"), "off", False)
    cpu.check_amp(torch.device("cuda"), "bf16", False)     # a GPU's bf16 is checked by utils.runtime
    monkeypatch.setattr(cpu, "cpu_info", lambda: describe(ZEN4_CAPS))
    cpu.check_amp(torch.device("cpu"), "bf16", False)


def test_this_machine_is_described_from_torchs_own_queries():
    info = cpu.cpu_info()
    assert info.threads == torch.get_num_threads() and info.vector_bits in (128, 256, 512)
    assert info.bf16 == (info.bf16 and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))
    assert info.summary().startswith("cpu: ") and json.dumps(info.to_dict())


# --- the commands, on an AVX2 machine emulated by the overrides ------------------------------------
needs_avx2 = pytest.mark.skipif(not torch.cpu.get_capabilities().get("avx2"),
                                reason="the AVX2 emulation needs an x86 CPU with AVX2")


def run_as_avx2(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **EMULATE_AVX2}
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


@needs_avx2
def test_every_command_stops_on_emulated_bf16_before_writing_and_says_what_it_runs(synthetic_root, tmp_path):
    from model import build_seg_model, save_final

    ckpt = tmp_path / "final.pth"
    save_final(str(ckpt), build_seg_model("drn_d_22"))
    image = sorted((synthetic_root / "cityscapes" / "leftImg8bit" / "val").rglob("*.png"))[0]
    evaluate = ["eval_cs.py", "--restore-from", str(ckpt), "--data-dir", str(synthetic_root / "cityscapes"),
                "--input-size", "64,32", "--num-workers", "0", "--device", "cpu", "--no-progress", "--limit", "1"]
    commands = {
        "eval": evaluate,
        "predict": ["predict.py", "--restore-from", str(ckpt), "--input", str(image), "--out", str(tmp_path / "p"),
                    "--input-size", "64,32", "--device", "cpu", "--no-progress"],
        "train": ["train_gta2cs_multi_drnd22.py", *tiny_train_args(synthetic_root, tmp_path / "run")],
    }
    for name, command in commands.items():
        result = run_as_avx2(*command, "--amp", "bf16")
        err = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(err) == 1, (name, result.stderr[-2000:])
        assert "no native bf16" in err[0] and "--amp off (fp32)" in err[0] and "--allow-slow-bf16" in err[0]
        assert ("the int8 graph" in err[0]) == (name == "predict")
    assert not (tmp_path / "p").exists() and not (tmp_path / "run").exists()
    result = run_as_avx2(*evaluate)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "AVX2 (256-bit vectors), bf16 NOT native" in result.stdout and "running: torch fp32" in result.stdout
    result = run_as_avx2(*evaluate, "--amp", "bf16", "--allow-slow-bf16")  # asked for anyway: it runs, and says so
    assert result.returncode == 0, result.stderr[-2000:]
    assert "bf16 NOT native" in result.stdout and "running: torch bf16 autocast" in result.stdout


@needs_avx2
def test_the_deployment_table_skips_bf16_on_an_emulated_avx2_cpu_and_shows_progress(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (optional: pip install onnxruntime)")
    out = tmp_path / "deploy.json"
    result = run_as_avx2("benchmark.py", "--deploy", "--quick", "--json", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    table = json.loads(out.read_text())
    assert {r["form"] for r in table["rows"]} == {"torch fp32", "torch fp32+CL+foldBN", "onnxruntime fp32",
                                                  "onnxruntime int8"}
    assert "no native bf16" in table["skipped"]["torch bf16+CL+foldBN"]
    assert "torch bf16" not in table["roofs"][0]["roof"]
    assert table["cpu"]["level"] == "avx2" and table["cpu"]["overrides"] == EMULATE_AVX2
    assert "torch bf16+CL+foldBN: skipped" in result.stdout
    assert "student drn_d_22 64x32 torch fp32: round 1/1" in result.stderr


@needs_avx2
def test_the_cpuid_mask_makes_every_library_see_an_avx2_cpu(tmp_path):
    import shutil

    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    lib = tmp_path / "cpuid_avx2.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(lib), str(REPO / "bench" / "cpuid_avx2.c")],
                   check=True, timeout=120)
    probe = ("import torch; from utils.cpu import cpu_info; i = cpu_info(); "
             "print(torch.backends.cpu.get_cpu_capability(), i.level, i.onnxruntime_level, i.bf16, i.int8_dot)")
    env = {k: v for k, v in os.environ.items() if k not in cpu.OVERRIDES}
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**env, "LD_PRELOAD": str(lib)})
    if "no cpuid faulting" in result.stderr:
        pytest.skip("this CPU or kernel offers no cpuid faulting")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["AVX2", "avx2", "avx2", "False", "AVX2,", "no", "VNNI"]
