"""utils/logger.py: what a run records about where it ran (config.json's environment)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from tests.conftest import REPO
from utils.logger import RunLogger, describe_machine, environment

PRINT_ENV = "import json; from utils.logger import environment; print(json.dumps(environment()))"


def test_environment_names_the_cpu_capability_the_overrides_and_torch():
    # a child process with ATen's portable kernels and oneDNN capped at AVX2: both are recorded
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    child = subprocess.run([sys.executable, "-c", PRINT_ENV], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == 0, child.stderr
    recorded = json.loads(child.stdout)
    assert recorded["cpu_capability"] == "DEFAULT"
    assert recorded["cpu_overrides"] == {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert recorded["torch"] == torch.__version__
    line = describe_machine(recorded)
    assert line.startswith(f"torch {torch.__version__}, CPU DEFAULT "
                           "(ATEN_CPU_CAPABILITY=default, ONEDNN_MAX_CPU_ISA=AVX2)")
    # what the CPU runs fast comes from utils/cpu.py, which answers as the machine the switches emulate
    features = recorded["cpu_features"]
    assert not features["bf16"] and not features["amx"]
    if features["architecture"] in ("x86_64", "x86"):
        assert features["level"] == "baseline" and features["vector_bits"] == 128


def test_the_environment_and_the_cpu_line_describe_the_cpu_from_one_place():
    from utils.cpu import cpu_info

    recorded, info = environment(), cpu_info()
    assert recorded["cpu_features"] == info.features() and recorded["cpu"] in (info.name, None)
    assert set(recorded["cpu_features"]) == {"architecture", "level", "vector_bits", "bf16", "int8_dot", "amx",
                                             "onnxruntime_level"}


def test_this_process_records_its_own_capability_and_no_override(monkeypatch):
    for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    recorded = environment()
    assert recorded["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert recorded["cpu_overrides"] == {}
    assert f"CPU {recorded['cpu_capability']}, " in describe_machine(recorded)


def test_the_gpu_is_named_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"NVIDIA H200 #{i}")
    recorded = environment()
    assert recorded["gpu"] == "NVIDIA H200 #0" and recorded["gpus"] == ["NVIDIA H200 #0", "NVIDIA H200 #1"]
    assert describe_machine(recorded).endswith(", GPU NVIDIA H200 #0")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert environment()["gpu"] is None and describe_machine(environment()).endswith(", no GPU")


def test_config_json_carries_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    logger = RunLogger(tmp_path, tensorboard=False)
    logger.write_run_info({"arch": "drn_d_22"})
    logger.close()
    info = json.loads((tmp_path / "config.json").read_text())
    assert info["config"] == {"arch": "drn_d_22"}
    assert info["environment"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["environment"]["cpu_overrides"] == {"ATEN_CPU_CAPABILITY": "avx2"}
    assert info["environment"]["torch"] == torch.__version__
