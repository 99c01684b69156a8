"""benchmark.py --gpu: the GPU check's code path on the CPU (--quick), its budget, its report and its settings."""
from __future__ import annotations

import importlib
import json

import pytest
import torch

import benchmark
from bench.gpu import QUICK, Budget, Check, Item, run
from bench.gpu_report import batch_fit
from bench.steps import SCRIPTS, config
from utils.cli import run_cli
from utils.config import parse_config
from utils.objective import knobs_of


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> tuple[dict, str]:
    """One `benchmark.py --gpu --device cpu --quick` run: its JSON and its Markdown."""
    out = tmp_path_factory.mktemp("gpu_check")
    assert benchmark.main(["--gpu", "--device", "cpu", "--quick", "--out", str(out)]) == 0
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def _rows(result: dict, **match) -> list[dict]:
    return [r for r in result["steps"] if all(r[k] == v for k, v in match.items())]


def test_quick_run_measures_the_distillation_step_its_way_and_its_memory(quick):
    result, _ = quick
    assert result["config"]["device"] == "cpu" and result["config"]["gpu"] is None and result["config"]["quick"]
    assert set(result["roof_start"]) == {"fp32", "bf16"} and min(result["roof_start"].values()) > 0
    assert not result["cut"] and not result["failed"]
    (fp32,) = _rows(result, case="dakd fp32")
    (fast,) = _rows(result, case="dakd bf16 CL")
    (old,) = _rows(result, case="dakd fp32 old way")
    (fp16,) = _rows(result, case="dakd fp16")
    (second,) = _rows(result, purpose="memory")
    assert fp16["status"] == "skipped" and "needs CUDA" in fp16["note"]
    for r in (fp32, fast, old, second):
        assert r["status"] == "measured" and r["arch"] == "drn_d_22" and r["source_size"] == [64, 32]
        assert 0 < r["step_s_min"] <= r["step_s"] and r["images_per_s"] == pytest.approx(r["batch"] / r["step_s"])
        # resident: student and teacher weights, SGD momentum, two discriminators with Adam: over 0.2 GiB
        assert r["peak_alloc_gib"] == r["peak_reserved_gib"] > 0.2
        assert r["gflop_per_step"] > 0 and r["tflop_s"] == pytest.approx(r["gflop_per_step"] / r["step_s"] / 1e3)
        roof = max(result["roof_start"][r["roof_kind"]], result["roof_end"][r["roof_kind"]])
        assert r["pct_of_roof"] == pytest.approx(100 * r["tflop_s"] / roof)
    assert fp32["roof_kind"] == "fp32" and fast["roof_kind"] == "bf16"
    assert fp32["finite"] and fast["finite"]
    assert not old["finite"]  # the original code's KL on log-probability targets is NaN in today's torch
    assert second["batch"] == 2 and second["gflop_per_step"] == pytest.approx(2 * fp32["gflop_per_step"])
    assert second["peak_alloc_gib"] >= fp32["peak_alloc_gib"]
    (fit,) = result["memory_fit"]
    assert fit["script"] == "dakd" and set(fit["peaks_gib"]) == {"1", "2"} and set(fit["max_batch"]) == {
        "24", "40", "80"}
    (speedup,) = result["speedups"]
    assert speedup["fp32_over_old_way"] == pytest.approx(old["step_s"] / fp32["step_s"])


def test_quick_run_covers_evaluation_determinism_tests_and_compile(quick):
    result, _ = quick
    assert [r["flags"] for r in result["eval"]] == ["--num-workers 0",
                                                    "--amp bf16 --channels-last --fold-bn --num-workers 0"]
    for r in result["eval"]:
        assert r["images"] == 2 and r["input_size"] == [64, 32] and r["label_size"] == [128, 64]
        assert r["model_images_per_s"] >= r["images_per_s"] > 0
    det = result["deterministic"]
    assert det["bitwise_equal"] and det["tensors_differing"] == 0 and det["finite"] and det["script"] == "student"
    tests = result["tests"]
    assert tests["status"] == "done" and tests["failed"] == tests["errors"] == 0
    assert tests["skipped"] == tests["tests"] >= 9  # no CUDA here: every gpu test is skipped, none fails
    (comp,) = result["compile"]
    assert comp["status"] == "measured" and comp["script"] == "student" and comp["backend"] == "eager"
    assert comp["first_step_s"] > comp["step_s"] > 0 and comp["speedup"] == pytest.approx(
        comp["eager_step_s"] / comp["step_s"])


def test_quick_markdown_has_a_row_or_line_per_section(quick):
    _, md = quick
    assert "CPU, no GPU (a stand-in run)" in md
    assert "| dakd (drn_d_22) | 1 | 64x32 / 80x45 | ours | fp32 | NCHW |" in md
    assert "| dakd (drn_d_22) | 1 | 64x32 / 80x45 | old way | fp32 | NCHW |" in md
    assert "skipped: fp16 autocast needs CUDA" in md
    for part in ("#### Memory", "| dakd | fp32 |", "#### `--compile`", "| student | bf16 | eager |",
                 "eval_cs.py's pipeline", "bit for bit equal: yes", "python -m pytest -m gpu tests/test_cuda_real.py"):
        assert part in md, part


def test_a_budget_too_short_cuts_every_case_and_still_writes_both_files(tmp_path):
    result = run("cpu", quick=True, budget_s=0.5, out=tmp_path)
    assert not result["steps"] and not result["eval"] and result["deterministic"] is None
    sections = {c["section"] for c in result["cut"]}
    assert sections == {"steps", "memory", "eval", "deterministic", "tests", "compile"}
    assert json.loads((tmp_path / "gpu_check.json").read_text())["cut"] == result["cut"]
    assert "Cut by the budget:" in (tmp_path / "gpu_check.md").read_text()


def test_items_past_the_deadline_are_cut_and_each_result_is_written_at_once(tmp_path):
    now = [0.0]
    check = Check(torch.device("cpu"), QUICK, Budget(25.0, 0.0, clock=lambda: now[0]), tmp_path, tmp_path,
                  ("steps",))
    seen = []

    def item(name: str) -> Item:
        def work() -> None:
            seen.append((name, (tmp_path / "gpu_check.json").exists()))
            now[0] += 10.0
        return Item("steps", name, work, lambda: 10.0)

    check.plan = lambda: [item("a"), item("b"), item("c")]
    result = check.run()
    assert [name for name, _ in seen] == ["a", "b"] and seen[1][1]  # b saw a's result on disk
    assert [c["item"] for c in result["cut"]] == ["c"] and "5 s left" in result["cut"][0]["reason"]


def test_budget_counts_the_steps_that_fit():
    now = [0.0]
    budget = Budget(10.0, 2.0, clock=lambda: now[0])
    assert budget.steps(0.5) == 16 and budget.allows(8.0) and not budget.allows(8.5)
    now[0] = 9.0
    assert budget.steps(0.5) == 0 and budget.left() == 1.0


def test_batch_fit_is_a_line_through_two_peaks_plus_the_context():
    fit = batch_fit([(5, 11.0), (1, 3.0)], context_gib=0.5)
    assert fit["per_image_gib"] == 2.0 and fit["fixed_gib"] == 1.0
    assert fit["max_batch"] == {"24": 11, "40": 19, "80": 39}  # (card - 0.5 - 1) / 2, rounded down
    flat = batch_fit([(1, 3.0), (2, 3.0)])
    assert flat["max_batch"] == {"24": None, "40": None, "80": None} and "did not grow" in flat["note"]
    assert batch_fit([(1, 3.0)]) is None


@pytest.mark.parametrize("setting", [s for s in SCRIPTS if s.key != "deeplab"], ids=lambda s: s.key)
def test_scripts_table_holds_each_scripts_net_batch_sizes_and_objective(setting):
    script = importlib.import_module(setting.script.removesuffix(".py"))
    distill = setting.teacher_arch is not None
    defaults = parse_config(vars(script), ["--teacher", "teacher.pth"] if distill else [], prog=setting.script,
                            description="", distill=distill)  # what the script runs with its constants
    cfg = config(setting, teacher_path="teacher.pth")
    assert (cfg.arch, cfg.aux_layer, cfg.batch_size) == (defaults.arch, defaults.aux_layer, defaults.batch_size)
    assert (cfg.input_size, cfg.input_size_target) == (defaults.input_size, defaults.input_size_target)
    assert knobs_of(cfg) == knobs_of(defaults) and cfg.paradigm == defaults.paradigm
    assert (setting.teacher_arch is not None) == (setting.script == "train_gta2cs_ts_multi.py")


def test_the_deeplab_row_trains_as_the_run_does_with_its_classifiers_at_ten_times(tmp_path):
    from bench.steps import SCRIPT, Case, StepLoop, make_step, quick_setting, script_nets, synthetic_batches

    setting = quick_setting(SCRIPT["deeplab"])
    nets, note = script_nets(setting, tmp_path)
    assert nets is not None and not note and nets.net.arch == "deeplabv2_resnet101"
    made = make_step(nets, Case("deeplab"), torch.device("cpu"))
    groups = made[1].net_opt.param_groups
    assert [g["lr_mult"] for g in groups] == [1.0, 10.0]  # the run's optimiser: the net's own parameter groups
    head = groups[1]["params"][0]
    before = head.detach().clone()
    loop = StepLoop(made, *synthetic_batches(setting, 1, pin=False), torch.device("cpu"), old_way=False)
    assert loop() and groups[0]["lr"] > 0 and groups[1]["lr"] == pytest.approx(10 * groups[0]["lr"])
    assert not torch.equal(head, before)  # the optimiser stepped


def test_an_unknown_architecture_is_skipped_with_its_reason(tmp_path):
    from dataclasses import replace

    from bench.steps import SCRIPT, script_nets

    nets, note = script_nets(replace(SCRIPT["student"], arch="no_such_net"), tmp_path)
    assert nets is None and "unknown architecture 'no_such_net'" in note


def test_compile_flag_compiles_the_nets_the_run_builds_in_place(monkeypatch, tmp_path):
    from model import build_seg_model, save_final
    from utils.config import TrainConfig
    from utils.nets import build_nets
    from utils.runtime import DistInfo

    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append((type(self).__name__, kw)))
    teacher = tmp_path / "teacher.pth"
    save_final(teacher, build_seg_model("drn_d_22"))
    constants = {"PRETRAINED": "none", "TEACHER": str(teacher), "NUM_STEPS_TARGET": 1}
    cfg = parse_config(constants, ["--compile"], prog="t", description="", distill=True)
    assert cfg.compile and not TrainConfig().compile
    assert parse_config({**constants, "COMPILE": True}, [], prog="t", description="", distill=True).compile
    build_nets(cfg, torch.device("cpu"), DistInfo())
    assert compiled == [("SegNet", {"backend": "inductor"})] * 2  # the net and the teacher, not the discriminators
    compiled.clear()
    build_nets(TrainConfig(pretrained="none"), torch.device("cpu"), DistInfo())
    assert not compiled


def test_gpu_flags_fail_in_one_line(capsys):
    assert run_cli(benchmark.main, ["--gpu", "--device", "cpu", "--sections", "steps,bogus"]) == 2
    assert "--sections: expected a comma-separated subset of steps,memory" in capsys.readouterr().err
    assert run_cli(benchmark.main, ["--gpu", "--device", "cpu", "--scripts", "student,nope"]) == 2
    assert "--scripts: expected a comma-separated subset of teacher,student,dakd" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert run_cli(benchmark.main, ["--gpu"]) == 2
        assert "--device cuda: CUDA is not available on this machine" in capsys.readouterr().err
