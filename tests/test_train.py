"""The three training scripts on the shared engine, end to end on the tiny synthetic benchmark."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import train_gta2cs_multi_drnd22 as student_script
import train_gta2cs_multi_drnd38 as teacher_script
import train_gta2cs_ts_multi as distill_script
from model import build_seg_model
from tests.conftest import run_script, tiny_train_args
from utils.cli import run_cli
from utils.errors import CheckpointError, ConfigError
from utils.logger import read_log


def _terms(folder: Path, phase: str | None = None) -> set[str]:
    keys = set()
    for rec in read_log(folder / "log.jsonl"):
        if phase is None or rec.get("phase") == phase:
            keys |= set(rec) - {"step", "time", "phase"}
    return keys


@pytest.fixture
def loaded_teachers(monkeypatch) -> list:
    """Every net the engine builds from a checkpoint (the --teacher), as the engine holds it."""
    import utils.nets as nets

    loaded, real = [], nets.build_from_checkpoint

    def capture(*args, **kwargs):
        loaded.append(real(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(nets, "build_from_checkpoint", capture)
    return loaded


@pytest.mark.parametrize("script, extra", [
    ("train_gta2cs_multi_drnd38.py", []),
    ("train_gta2cs_multi_drnd22.py", []),
    ("train_gta2cs_ts_multi.py", ["--paradigm", "both"]),
])
def test_each_script_runs_end_to_end_and_writes_its_files(script, extra, synthetic_root, tmp_path, teacher_ckpt):
    if script == "train_gta2cs_ts_multi.py":
        extra = [*extra, "--teacher", str(teacher_ckpt)]
    out = tmp_path / "run"
    result = run_script(script, *tiny_train_args(synthetic_root, out, steps=2), *extra)
    assert result.returncode == 0, result.stderr
    for name in ("last.pth", "final.pth", "log.jsonl", "config.json"):
        assert (out / name).is_file(), name
    final = torch.load(out / "final.pth", weights_only=True)
    expected_arch = "drn_d_38" if "drnd38" in script else "drn_d_22"
    assert final["arch"] == expected_arch
    assert final["aux_layer"] == (7 if expected_arch == "drn_d_38" else 6)
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["script"] == script
    assert [r["step"] for r in read_log(out / "log.jsonl")] == [1, 2]


def test_resume_continues_at_the_saved_step(synthetic_root, tmp_path):
    out = tmp_path / "run"
    args = tiny_train_args(synthetic_root, out, steps=4)
    assert student_script.main([*args, "--num-steps-stop", "2"]) == 0
    assert torch.load(out / "last.pth", weights_only=True)["step"] == 2
    assert student_script.main([*args, "--resume", str(out / "last.pth")]) == 0
    assert [r["step"] for r in read_log(out / "log.jsonl")] == [1, 2, 3, 4]
    assert torch.load(out / "last.pth", weights_only=True)["step"] == 4


def test_distillation_leaves_the_teacher_it_loaded_unchanged(synthetic_root, tmp_path, teacher_ckpt,
                                                             loaded_teachers):
    weights_before = torch.load(teacher_ckpt, weights_only=True)["state_dict"]
    out = tmp_path / "run"
    args = [*tiny_train_args(synthetic_root, out, steps=2), "--teacher", str(teacher_ckpt), "--paradigm", "both"]
    assert distill_script.main(args) == 0
    (teacher,) = loaded_teachers
    after = teacher.state_dict()
    # weights and batch-norm statistics alike: a teacher left in train mode would move its running means
    assert after.keys() == weights_before.keys()
    assert [k for k, v in weights_before.items() if not torch.equal(after[k].cpu(), v)] == []



@pytest.mark.parametrize("paradigm, has_src, has_tgt", [
    ("source", True, False), ("target", False, True), ("both", True, True)])
def test_each_paradigm_switches_exactly_its_loss_terms(paradigm, has_src, has_tgt, synthetic_root, tmp_path,
                                                       teacher_ckpt):
    out = tmp_path / "run"
    args = [*tiny_train_args(synthetic_root, out, steps=1), "--teacher", str(teacher_ckpt), "--paradigm", paradigm]
    assert distill_script.main(args) == 0
    distill = {"kl_main", "kl_aux", "mse", "pseudo"}
    expected = {"seg_main_src", "seg_aux_src", "adv_aux_tgt", "adv_main_tgt", "d_aux", "d_main", "total", "lr", "lr_D"}
    expected |= {f"{t}_src" for t in distill} if has_src else set()
    expected |= {f"{t}_tgt" for t in distill} if has_tgt else set()
    assert _terms(out) == expected


def test_sequential_runs_both_then_target_only(synthetic_root, tmp_path, teacher_ckpt):
    out = tmp_path / "run"
    args = [*tiny_train_args(synthetic_root, out, steps=2), "--teacher", str(teacher_ckpt),
            "--paradigm", "sequential", "--num-steps-target", "2"]
    assert distill_script.main(args) == 0
    phases = [r["phase"] for r in read_log(out / "log.jsonl")]
    assert phases == ["both", "both", "target", "target"]
    assert {"kl_main_src", "kl_main_tgt"} <= _terms(out, "both")
    assert "kl_main_src" not in _terms(out, "target") and "kl_main_tgt" in _terms(out, "target")
    assert (out / "both_phase_final.pth").is_file() and (out / "final.pth").is_file()


def test_source_only_run_has_no_adversarial_terms(synthetic_root, tmp_path):
    out = tmp_path / "run"
    args = [*tiny_train_args(synthetic_root, out, steps=1), "--lambda-adv-aux", "0", "--lambda-adv-main", "0"]
    assert student_script.main(args) == 0
    assert _terms(out) == {"seg_main_src", "seg_aux_src", "total", "lr", "lr_D"}


def test_bdd_source_and_bf16_autocast_run_on_cpu(synthetic_root, tmp_path, monkeypatch):
    import utils.nets as nets

    dtypes, real = set(), nets.build_seg_model

    def spy(*args, **kwargs):
        net = real(*args, **kwargs)
        net.base.layer0[0].register_forward_hook(lambda module, inputs, output: dtypes.add(output.dtype))
        return net

    monkeypatch.setattr(nets, "build_seg_model", spy)
    out = tmp_path / "run"
    # --allow-slow-bf16: this test is about bf16's effect, so it runs on a CPU without native bf16 too (emulated)
    args = [*tiny_train_args(synthetic_root, out, source="bdd", steps=1), "--amp", "bf16", "--allow-slow-bf16"]
    assert teacher_script.main(args) == 0
    assert dtypes == {torch.bfloat16}  # the net's first convolution ran under bf16 autocast
    record = read_log(out / "log.jsonl")[-1]
    assert all(math.isfinite(record[k]) for k in ("seg_main_src", "adv_main_tgt", "d_main"))
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["source"] == "bdd" and config["amp"] == "bf16"


def test_validation_while_training_logs_the_miou_eval_cs_gives(synthetic_root, tmp_path):
    import eval_cs

    out = tmp_path / "run"
    args = [*tiny_train_args(synthetic_root, out, steps=2), "--eval-every", "2", "--eval-limit", "2",
            "--keep-best"]
    assert student_script.main(args) == 0
    values = [r["val/mIoU"] for r in read_log(out / "log.jsonl") if "val/mIoU" in r]
    assert len(values) == 1
    # selected_oracle.pth (--keep-best) is the net validated at step 2: eval_cs.py on it gives the logged score
    again = eval_cs.main(["--restore-from", str(out / "selected_oracle.pth"),
                          "--data-dir", str(synthetic_root / "cityscapes"), "--input-size", "64,32", "--limit", "2",
                          "--batch-size", "2", "--num-workers", "0", "--device", "cpu", "--no-progress"])
    assert again["mIoU"] == pytest.approx(values[0], abs=1e-9)


def test_log_plotter_and_tensorboard_events(synthetic_root, tmp_path):
    from utils.plot_log import plot_log

    out = tmp_path / "run"
    assert student_script.main(tiny_train_args(synthetic_root, out, steps=2)) == 0
    png = plot_log(out / "log.jsonl", tmp_path / "curves.png")
    assert png.stat().st_size > 1000
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = event_accumulator.EventAccumulator(str(out / "tb"))
    events.Reload()
    logged = read_log(out / "log.jsonl")
    for key in ("seg_main_src", "adv_main_tgt", "d_main", "lr"):  # TensorBoard holds what log.jsonl holds
        assert [(e.step, e.value) for e in events.Scalars(key)] == [
            (r["step"], pytest.approx(r[key], rel=1e-6)) for r in logged]


def test_zero_init_residual_flag_reaches_the_network(synthetic_root, tmp_path, monkeypatch):
    import utils.nets as nets

    built = {}
    original = nets.build_seg_model

    def spy(*args, **kwargs):
        net = original(*args, **kwargs)
        built["bn"] = net.base.layer3[0].bn2.weight.detach().clone()
        return net

    monkeypatch.setattr(nets, "build_seg_model", spy)
    out = tmp_path / "run"
    assert student_script.main([*tiny_train_args(synthetic_root, out, steps=1), "--zero-init-residual"]) == 0
    assert float(built["bn"].abs().sum()) == 0
    assert json.loads((out / "config.json").read_text())["config"]["zero_init_residual"] is True


def test_an_old_code_state_dict_serves_as_teacher(synthetic_root, tmp_path, loaded_teachers):
    torch.manual_seed(0)
    sd = dict(build_seg_model("drn_d_38").state_dict())  # no architecture recorded, as the original code saved
    sd["up1.weight"], sd["up2.weight"] = torch.zeros(19, 1, 16, 16), torch.zeros(19, 1, 16, 16)
    teacher = tmp_path / "GTA5_teacher.pth"
    torch.save(sd, teacher)
    out = tmp_path / "run"
    args = [*tiny_train_args(synthetic_root, out, steps=1), "--teacher", str(teacher), "--paradigm", "source"]
    assert distill_script.main(args) == 0
    assert {"kl_main_src", "kl_aux_src", "mse_src", "pseudo_src"} <= _terms(out)
    (net,) = loaded_teachers  # the architecture read from the keys, every tensor from the file
    assert net.arch == "drn_d_38"
    state = net.state_dict()
    assert all(torch.equal(state[k].cpu(), v) for k, v in sd.items() if not k.startswith(("up1", "up2")))



def test_resume_refuses_another_aux_layer(synthetic_root, tmp_path, capsys):
    out = tmp_path / "run"
    args = tiny_train_args(synthetic_root, out, steps=4)
    assert student_script.main([*args, "--num-steps-stop", "2"]) == 0
    for aux in ("5", "7"):  # 5: other shapes; 7: same shapes, the head would silently move
        with pytest.raises(ConfigError, match=f"--aux-layer {aux} \\(the run has 6\\)"):
            student_script.main([*args, "--resume", str(out / "last.pth"), "--aux-layer", aux])
    # a checkpoint without its settings (written by an older version) is still checked by the engine
    state = torch.load(out / "last.pth", weights_only=True)
    del state["config"]
    torch.save(state, out / "bare.pth")
    with pytest.raises(CheckpointError, match="aux_layer=6, this run asks for 7"):
        student_script.main([*args, "--resume", str(out / "bare.pth"), "--aux-layer", "7"])


def test_keep_best_survives_resumes(synthetic_root, tmp_path, monkeypatch):
    scores = iter([0.5, 0.2])  # step 2 is the best; step 6, two resumes later, is worse

    def fake_evaluate(net, loader, device, **kwargs):
        return {"mIoU": next(scores), "pixel_acc": 0.5}

    monkeypatch.setattr("utils.validation.evaluate", fake_evaluate)
    out = tmp_path / "run"
    args = [*tiny_train_args(synthetic_root, out, steps=6), "--eval-every", "2", "--keep-best"]
    last = str(out / "last.pth")
    assert student_script.main([*args, "--num-steps-stop", "2"]) == 0
    best = torch.load(out / "selected_oracle.pth", weights_only=True)["state_dict"]
    assert torch.load(last, weights_only=True)["best_val_mIoU"] == 0.5
    # a stretch without validation carries the score through its saves
    host = ["--num-workers", "0", "--no-progress", "--device", "cpu"]
    assert student_script.main(["--resume", last, *host, "--eval-every", "0", "--num-steps-stop", "4"]) == 0
    assert torch.load(last, weights_only=True)["best_val_mIoU"] == 0.5
    assert student_script.main(["--resume", last, *host, "--eval-every", "2"]) == 0  # validates again
    kept = torch.load(out / "selected_oracle.pth", weights_only=True)["state_dict"]
    assert all(torch.equal(best[k], kept[k]) for k in best)
    assert next(scores, None) is None  # one validation before the resumes, one after


def test_a_missing_val_split_stops_the_run_before_it_writes_anything(synthetic_root, tmp_path):
    from utils.errors import DatasetError

    out = tmp_path / "run"
    args = [*tiny_train_args(synthetic_root, out, steps=2), "--eval-every", "1", "--val-split", "nope"]
    with pytest.raises(DatasetError, match="nope"):
        student_script.main(args)
    assert not out.exists()


def test_an_offline_imagenet_download_names_the_flag_and_leaves_no_run_folder(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # empty cache; conftest's opener is offline
    out = tmp_path / "run"
    args = [*tiny_train_args(synthetic_root, out, steps=1), "--pretrained", "imagenet"]
    expected = r"^--pretrained imagenet: no ImageNet weights for drn_d_22: every source failed: .*fetch drn_d_22"
    with pytest.raises(CheckpointError, match=expected + r".*--pretrained none"):
        student_script.main(args)
    assert not out.exists()


def test_sync_bn_on_a_cpu_is_refused_in_a_single_process_too(synthetic_root, tmp_path):
    from utils.errors import ConfigError

    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="--sync-bn needs CUDA"):
        student_script.main([*tiny_train_args(synthetic_root, out, steps=1), "--sync-bn"])
    assert not out.exists()


def test_resume_alone_continues_the_run_with_its_saved_settings(synthetic_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.chdir(synthetic_root)  # the run starts with data paths relative to this folder
    args = [a if a != str(synthetic_root / "gta5") else "gta5" for a in tiny_train_args(synthetic_root, out, steps=4)]
    assert "gta5" in args
    assert student_script.main([*args, "--learning-rate", "0.002", "--amp", "bf16", "--allow-slow-bf16",
                                "--num-steps-stop", "2"]) == 0
    last = str(out / "last.pth")
    # from another folder, with no data flags, no run folder, no schedule: all from the checkpoint
    monkeypatch.chdir(tmp_path)
    assert student_script.main(["--resume", last, "--no-progress", "--device", "cpu", "--num-workers", "0"]) == 0
    assert [r["step"] for r in read_log(out / "log.jsonl")] == [1, 2, 3, 4]
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["learning_rate"] == 0.002 and config["amp"] == "bf16" and config["log_every"] == 1
    assert config["allow_slow_bf16"] is True  # kept by the resume, so bf16 goes on where it is emulated
    assert config["data_dir"] == str(synthetic_root / "gta5")
    # a flag that would change the run is refused, naming it and the run's value
    assert run_cli(student_script.main, ["--resume", last, "--learning-rate", "0.5", "--batch-size", "2"]) == 2
    err = capsys.readouterr().err
    assert "--learning-rate 0.5 (the run has 0.002)" in err and "--batch-size" not in err
    with pytest.raises(ConfigError, match="it is a run of train_gta2cs_multi_drnd22.py"):
        teacher_script.main(["--resume", last])


def test_resume_names_a_saved_data_folder_that_is_gone(synthetic_root, tmp_path, capsys):
    import shutil

    moved = tmp_path / "gta5"
    shutil.copytree(synthetic_root / "gta5", moved)
    out = tmp_path / "run"
    args = [*tiny_train_args(synthetic_root, out, steps=4), "--data-dir", str(moved), "--num-steps-stop", "2"]
    assert student_script.main(args) == 0
    shutil.move(moved, tmp_path / "gta5_elsewhere")
    with pytest.raises(ConfigError, match=f"the run's --data-dir {moved} does not exist here; give --data-dir again"):
        student_script.main(["--resume", str(out / "last.pth")])
    host = ["--num-workers", "0", "--no-progress", "--device", "cpu"]
    assert student_script.main(["--resume", str(out / "last.pth"), *host,
                                "--data-dir", str(tmp_path / "gta5_elsewhere")]) == 0


def test_sequential_second_phase_restarts_schedule_and_net_optimizer_and_keeps_the_discriminators(
        synthetic_root, tmp_path, teacher_ckpt, monkeypatch):
    import utils.engine as engine

    made, ends = [], []
    real_start_phase, real_train_phase = engine.start_phase, engine.train_phase

    def start_phase(run, state=None):
        real_start_phase(run, state)
        made.append((run.phase.name, run.optimisers.net_opt, run.optimisers.scaler,
                     [{k: v.clone() for k, v in d.state_dict().items()} for d in run.discs]))

    def train_phase(run):
        real_train_phase(run)
        ends.append((run.optimisers.net_opt.state_dict()["state"],
                     [{k: v.clone() for k, v in d.state_dict().items()} for d in run.discs]))

    monkeypatch.setattr(engine, "start_phase", start_phase)
    monkeypatch.setattr(engine, "train_phase", train_phase)
    out = tmp_path / "run"
    args = [*tiny_train_args(synthetic_root, out, steps=2), "--teacher", str(teacher_ckpt), "--paradigm",
            "sequential", "--num-steps-target", "2", "--learning-rate", "0.01"]
    assert distill_script.main(args) == 0
    (first, opt1, scaler1, d_start), (second, opt2, scaler2, d_at_second) = made
    assert (first, second) == ("both", "target")
    assert opt2 is not opt1 and ends[0][0]  # phase 1 had momentum buffers ...
    assert scaler2 is scaler1  # the fp16 loss scaler carries over (disabled here, the same object)
    lrs = [(r["phase"], r["lr"]) for r in read_log(out / "log.jsonl")]
    assert lrs[0] == ("both", 0.01) and lrs[2] == ("target", 0.01)  # ... and the poly schedule restarts
    for kept, trained, initial in zip(d_at_second, ends[0][1], d_start):
        assert all(torch.equal(kept[k], trained[k]) for k in kept)  # D1, D2 keep their trained weights
        assert any(not torch.equal(kept[k], initial[k]) for k in kept)  # which moved in phase 1


def test_a_checkpoint_whose_config_uses_the_older_knob_names_resumes(synthetic_root, tmp_path, teacher_ckpt):
    out = tmp_path / "run"
    args = [*tiny_train_args(synthetic_root, out, steps=4), "--teacher", str(teacher_ckpt), "--paradigm", "both",
            "--lambda-pseudo", "0.5"]
    assert distill_script.main([*args, "--num-steps-stop", "2"]) == 0
    state = torch.load(out / "last.pth", weights_only=True)
    older = {"lambda_adv_aux": "lambda_adv_target1", "lambda_adv_main": "lambda_adv_target2",
             "lambda_pseudo": "lambda_targetce", "lambda_target": "target_distill"}
    state["config"] = {older.get(k, k): v for k, v in state["config"].items()}  # as the version before wrote it
    torch.save(state, out / "last.pth")
    assert distill_script.main(["--resume", str(out / "last.pth"), "--no-progress", "--num-workers", "0"]) == 0
    assert [r["step"] for r in read_log(out / "log.jsonl")] == [1, 2, 3, 4]
    resumed = torch.load(out / "last.pth", weights_only=True)["config"]
    assert resumed["lambda_pseudo"] == 0.5 and resumed["num_steps"] == 4
