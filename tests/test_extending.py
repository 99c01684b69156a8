"""docs/extending.md's worked example, performed: its code blocks applied to a copy of the repository, a
training run with the new paradigm and term, and the term seen in log.jsonl."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from model import build_seg_model, save_final
from tests.conftest import REPO, run_script, tiny_train_args
from utils.logger import read_log

GUIDE = REPO / "docs" / "extending.md"
BLOCK = re.compile(r"```python\n# after: (.+?)\n(.*?)```", re.S)


def apply_guide(objective: Path) -> int:
    """Insert each block of the guide after the line it names; return how many were applied."""
    text = objective.read_text()
    blocks = BLOCK.findall(GUIDE.read_text())
    for anchor, code in blocks:
        lines = [line for line in text.splitlines() if line.strip() == anchor.strip()]
        assert len(lines) == 1, f"docs/extending.md: the line {anchor!r} is not once in utils/objective.py"
        text = text.replace(lines[0] + "\n", lines[0] + "\n" + code, 1)
    objective.write_text(text)
    return len(blocks)


def test_the_guides_new_term_and_paradigm_train_and_are_logged(synthetic_root, tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".git", ".venv*", "__pycache__", "runs", "data",
                                                                  "snapshots", "docs", "figures", "tests"))
    assert apply_guide(copy / "utils" / "objective.py") == 4
    teacher = tmp_path / "teacher.pth"
    torch.manual_seed(0)
    save_final(teacher, build_seg_model("drn_d_38"))
    out = tmp_path / "run"
    args = [*tiny_train_args(synthetic_root, out, steps=1), "--teacher", str(teacher),
            "--paradigm", "both_entropy", "--lambda-entropy", "0.01"]
    result = run_script(str(copy / "train_gta2cs_ts_multi.py"), *args, cwd=copy)
    assert result.returncode == 0, result.stderr
    (record,) = [r for r in read_log(out / "log.jsonl") if "total" in r]
    assert record["phase"] == "both_entropy" and record["entropy_tgt"] > 0
    assert {"kl_main_tgt", "pseudo_src", "adv_main_tgt"} <= set(record)
    help_text = run_script(str(copy / "train_gta2cs_ts_multi.py"), "--help", cwd=copy).stdout
    assert "--lambda-entropy" in help_text and "weight of the entropy of the main head" in help_text

    # Under torchrun, unchanged: with every other target term at 0, the new term alone makes the synced
    # backward, and it leaves the aux head out; what it reads was found, not declared, so DDP is told.
    out = tmp_path / "ddp"
    args = [*tiny_train_args(synthetic_root, out, steps=2), "--teacher", str(teacher), "--batch-size", "1",
            "--paradigm", "both_entropy", "--lambda-entropy", "0.01", "--lambda-adv-aux", "0", "--lambda-adv-main", "0",
            "--lambda-kl", "0", "--lambda-mse", "0", "--lambda-pseudo", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "0"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "train_gta2cs_ts_multi.py", *args], cwd=copy, capture_output=True, text=True, timeout=300,
                         env=env)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    records = [r for r in read_log(out / "log.jsonl") if "total" in r]
    assert [r["step"] for r in records] == [1, 2] and all(r["entropy_tgt"] > 0 for r in records)
    assert set(records[0]) >= {"entropy_tgt", "seg_main_src"} and "adv_main_tgt" not in records[0]
