"""DDP on CPU: each training script under `torchrun --nproc_per_node 2` (gloo) at a tiny size.

Equivalence rule checked here: a run on W ranks with --batch-size B equals a single process with
--batch-size B --iter-size W (same global batch B x W x iter_size). Batch norm in train mode
normalises over what one forward sees, so per-rank BN (W ranks x B) matches iter_size sub-batches
of B exactly, and the comparison can be tight: parameters agree to float32 summation order
(UPDATE_RTOL below). BN running statistics are not compared with the single-process run (DDP keeps
rank 0's, re-broadcast every forward; they take no part in a training step). With two listed images
per domain, each epoch's permutation gives rank r the sample that sub-batch r gets in the single
process, while the two ranks still see different images (so only gradient averaging keeps them
identical).
"""
from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, tiny_train_args

# The two runs do the same arithmetic in another order (all-reduce vs accumulation), and how far apart that
# leaves them depends on the CPU's kernels: two steps amplify float32 rounding (batch-norm backward at batch 1
# on 8x4 maps; Adam steps every element by ~lr_D however small its gradient, so a discriminator weight whose
# gradient is at rounding level steps either way). A constant picked on one machine failed on another (3.4e-5
# on the first conv on an AVX2 machine against 2e-5 allowed), so the tolerance is relative to what training
# did: the runs' changes since the common start differ by at most UPDATE_RTOL of the change's L2 norm, per
# tensor for the student (SGD) and per discriminator (Adam's rare opposite step is judged against the whole
# update). Measured worst with AVX-512, AVX2 and scalar kernels: 2.8e-3 (student tensor), 1.6e-3
# (discriminator). Bugs it catches (tried): a sub-batch weighted 10% off (error 0.30), seg_aux or pseudo left
# out of one sub-batch (0.34, 0.67), a discriminator's target half left out of one (0.90). A student's
# adversarial term (weights 2e-4, 1e-3) moves two steps' update less than rounding does: not seen here.
UPDATE_RTOL = 3e-2
SCRIPTS = {
    "train_gta2cs_multi_drnd38.py": [],
    "train_gta2cs_multi_drnd22.py": [],
    "train_gta2cs_ts_multi.py": ["--paradigm", "both"],
}

# Runs a training script's main() and, afterwards, saves what this rank holds; records checkpoint writes.
WRAPPER = """
import os, sys, importlib
sys.path.insert(0, {repo!r})
import torch
import utils.engine as engine
import utils.run as run_module
from utils.runtime import unwrap

out, rank = {out!r}, os.environ.get("RANK", "0")
held = {{}}
wrap_ddp = run_module.wrap_ddp

def states(net, discs):
    parts = {{"net": net, "d1": discs[0], "d2": discs[1]}}
    return {{name: {{k: v.clone() for k, v in unwrap(m).state_dict().items()}} for name, m in parts.items()}}

def capture(*args, **kwargs):
    net, discs = wrap_ddp(*args, **kwargs)
    held.update(net=net, discs=discs, start=states(net, discs))  # where training starts from
    return net, discs

def spy(module, name):
    real = getattr(module, name)
    def write(*args, **kwargs):
        with open(os.path.join(out, "writes_rank" + rank + ".txt"), "a") as f:
            f.write(name + "\\n")
        return real(*args, **kwargs)
    return write

run_module.wrap_ddp = capture
run_module.save_training_state = spy(run_module, "save_training_state")
engine.save_final = spy(engine, "save_final")
status = importlib.import_module({module!r}).main(sys.argv[1:])
torch.save({{**states(held["net"], held["discs"]), "start": held["start"]}}, os.path.join(out, "rank" + rank + ".pt"))
sys.exit(status)
"""


def _list(root: Path, pattern: str, path: Path) -> Path:
    files = sorted(str(p.relative_to(root)) for p in root.glob(pattern))[:2]
    path.write_text("\n".join(files) + "\n")
    return path


@pytest.fixture(scope="module")
def setup(synthetic_root, tmp_path_factory):
    """Two-image lists per domain and a DRN-D-38 teacher checkpoint."""
    from model import build_seg_model, save_final

    tmp = tmp_path_factory.mktemp("ddp")
    teacher = tmp / "teacher.pth"
    torch.manual_seed(0)
    save_final(teacher, build_seg_model("drn_d_38"))
    lists = ["--data-list", str(_list(synthetic_root / "gta5", "images/*.png", tmp / "src.txt")),
             "--data-list-target", str(_list(synthetic_root / "cityscapes", "leftImg8bit/train/*/*.png",
                                             tmp / "tgt.txt"))]
    return {"root": synthetic_root, "teacher": teacher, "lists": lists, "tmp": tmp}


def _run(setup, script: str, name: str, nproc: int, extra: list[str]) -> tuple[Path, subprocess.CompletedProcess]:
    if name in setup:  # one run serves several tests
        return setup[name]
    out = setup["tmp"] / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    wrapper = out / "wrapper.py"
    wrapper.write_text(WRAPPER.format(repo=str(REPO), out=str(out), module=script.removesuffix(".py")))
    args = [*tiny_train_args(setup["root"], out / "run", steps=2), *setup["lists"], *SCRIPTS[script], *extra]
    if "ts" in script:
        args += ["--teacher", str(setup["teacher"])]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [*launcher, str(wrapper), *args] if nproc > 1 else [sys.executable, str(wrapper), *args]
    # No port is guessed: --standalone binds the rendezvous store to port 0 (the OS picks), and with the store
    # shared (torch's default, pinned here) the ranks join that same store instead of a port found free earlier.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "0"}
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    setup[name] = out, result
    return out, result


def _params(state: dict) -> dict:
    """Learnable tensors only (BN running statistics and counters left out)."""
    return {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def _update_error(got: list[torch.Tensor], want: list[torch.Tensor], start: list[torch.Tensor]) -> float:
    """||got - want|| / ||want - start|| over the tensors together: the error relative to the update since start."""
    diff = sum(float((g.double() - w.double()).pow(2).sum()) for g, w in zip(got, want))
    update = sum(float((w.double() - s.double()).pow(2).sum()) for w, s in zip(want, start))
    return (diff / update) ** 0.5 if update else (0.0 if diff == 0 else float("inf"))


def _assert_same_training(got: dict, want: dict, start: dict) -> None:
    """`got` and `want` trained the same nets from `start`, up to float32 summation order (UPDATE_RTOL)."""
    for part in ("net", "d1", "d2"):
        params = _params(want[part])
        assert all(torch.equal(start[part][k], got["start"][part][k]) for k in params), f"{part}: other start"
        groups = [[k] for k in params] if part == "net" else [list(params)]
        for keys in groups:
            error = _update_error([got[part][k] for k in keys], [want[part][k] for k in keys],
                                  [start[part][k] for k in keys])
            assert error <= UPDATE_RTOL, f"{part}.{keys[0] if len(keys) == 1 else '*'}: update off by {error:.2e}"


def _assert_ranks_equal_one_process(ddp: Path, single: Path) -> list[dict]:
    """Both ranks hold the same nets, and they equal the single process's (to summation order); returns them."""
    ranks = [torch.load(ddp / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    reference = torch.load(single / "rank0.pt", weights_only=True)
    for part in ("net", "d1", "d2"):
        for key, value in _params(ranks[0][part]).items():
            assert torch.equal(value, ranks[1][part][key]), f"{part}.{key} differs between ranks"
    _assert_same_training(ranks[0], reference, reference["start"])
    return ranks


@pytest.mark.float_sensitive
@pytest.mark.parametrize("script", list(SCRIPTS))
def test_two_ranks_agree_with_each_other_and_with_one_process(script, setup):
    ddp, result = _run(setup, script, f"ddp_{script}", 2, ["--batch-size", "1"])
    single, _ = _run(setup, script, f"single_{script}", 1, ["--batch-size", "1", "--iter-size", "2"])
    ranks = _assert_ranks_equal_one_process(ddp, single)
    # rank 0 alone wrote checkpoints, logs and the closing line
    assert (ddp / "writes_rank0.txt").read_text().split() == ["save_training_state", "save_final"]
    assert not (ddp / "writes_rank1.txt").exists()
    steps = [line for line in (ddp / "run" / "log.jsonl").read_text().splitlines() if '"step"' in line]
    assert len(steps) == 2
    assert result.stdout.count("done; weights in") == 1
    saved = torch.load(ddp / "run" / "final.pth", weights_only=True)["state_dict"]
    for key, value in ranks[0]["net"].items():
        assert torch.equal(saved[key], value)


# Each leaves a head out of the synced backward, so that DDP must find unused parameters: one adversarial
# weight at zero in the adaptation scripts (a new flag name, an old one), and the original code's terms with
# only main-head terms left on target batches (its KL reads the main head even on the aux level).
LEAVE_A_HEAD_OUT = {
    "--lambda-adv-aux 0": ("train_gta2cs_multi_drnd22.py", ["--lambda-adv-aux", "0"]),
    "--lambda-adv-target2 0": ("train_gta2cs_multi_drnd22.py", ["--lambda-adv-target2", "0"]),
    "original form, target, main-head terms only": (
        "train_gta2cs_ts_multi.py", ["--paradigm", "target", "--objective", "original", "--lambda-adv-aux", "0",
                                     "--lambda-mse", "0"]),
}


@pytest.mark.float_sensitive
@pytest.mark.parametrize("case", list(LEAVE_A_HEAD_OUT))
def test_a_synced_pass_that_leaves_a_head_out_trains_under_ddp_and_matches_one_process(case, setup):
    # Without unused-parameter detection DDP stops at step 2: "Expected to have finished reduction in the
    # prior iteration" (the parameters of the head left out).
    script, off = LEAVE_A_HEAD_OUT[case]
    ddp, _ = _run(setup, script, f"ddp_{case}", 2, ["--batch-size", "1", *off])
    single, _ = _run(setup, script, f"single_{case}", 1, ["--batch-size", "1", "--iter-size", "2", *off])
    _assert_ranks_equal_one_process(ddp, single)


def test_distributed_run_resumes_where_it_stopped(setup):
    script = "train_gta2cs_multi_drnd22.py"
    straight, _ = _run(setup, script, f"ddp_{script}", 2, ["--batch-size", "1"])
    first, _ = _run(setup, script, "first", 2, ["--batch-size", "1", "--num-steps", "2", "--num-steps-stop", "1"])
    resumed, _ = _run(setup, script, "resumed", 2, ["--batch-size", "1", "--resume", str(first / "run" / "last.pth")])
    a = torch.load(straight / "rank0.pt", weights_only=True)
    b = [torch.load(resumed / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for part in ("net", "d1", "d2"):  # the same arithmetic in the same order: bit-identical on any CPU
        for key, value in _params(a[part]).items():
            assert torch.equal(b[0][part][key], b[1][part][key])
            assert torch.equal(b[0][part][key], value), f"{part}.{key}"


def test_sync_bn_on_cpu_is_a_one_line_error():
    from utils.config import TrainConfig
    from utils.errors import ConfigError
    from utils.nets import wrap_ddp
    from utils.runtime import DistInfo

    with pytest.raises(ConfigError, match="--sync-bn needs CUDA"):
        wrap_ddp(TrainConfig(sync_bn=True), DistInfo(0, 2, 0), torch.device("cpu"), torch.nn.Linear(1, 1), (), [])


class _SyncProbe(torch.nn.Module):
    """Stands in for DDP in one process: records which parameters get a gradient in the synced backward."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.module, self.syncing, self.synced = net, True, set()
        for name, p in net.named_parameters():
            p.register_hook(lambda grad, name=name: self.synced.add(name) if self.syncing else None)

    def forward(self, x):
        return self.module(x)

    @contextlib.contextmanager
    def no_sync(self):
        self.syncing = False
        try:
            yield
        finally:
            self.syncing = True


def _moved_reads(x):
    """A test-only form: the aux segmentation term reads the main head instead."""
    from utils.loss import seg_loss
    from utils.objective import MAIN

    return seg_loss(x.student[MAIN], x.labels)


def _grid():
    """Every form (the two of the table and a test-only one) x every phase x each weight at 0 or its default:
    the objectives they build, grouped by their synced pass (the same active terms in the same forms on the
    domain whose backward DDP all-reduces: the target's when it has terms, else the source's)."""
    from utils.objective import ADAPTATION, FORMS, PARADIGMS, Knobs, build_objective, kl_as_original

    forms = {**FORMS, "test-only": {"seg_aux": _moved_reads, "kl_main": kl_as_original}}
    weights = ("lambda_seg", "lambda_adv_aux", "lambda_adv_main", "lambda_kl", "lambda_mse", "lambda_pseudo",
               "lambda_target")
    specs = {"adapt": ADAPTATION[0], **{f"{name}/{s.name}": s for name, specs in PARADIGMS.items() for s in specs}}
    steps: dict = {}
    for phase, spec in specs.items():
        used = weights[:3] if phase == "adapt" else weights
        for form, replaced in forms.items():
            for zeros in itertools.product((False, True), repeat=len(used)):
                knobs = Knobs(**{w: 0.0 for w, zero in zip(used, zeros) if zero})
                objective = build_objective(spec, knobs, num_classes=3, forms=replaced)
                if not objective.source:
                    continue  # every source term at zero: no step at all
                synced = "target" if objective.uses_target else "source"
                key = (synced, tuple((t.name, t.fn) for t in objective.terms(synced)))
                steps.setdefault(key, []).append((phase, form, zeros, objective))
    return steps


def test_unused_parameter_detection_is_on_exactly_when_the_synced_backward_skips_parameters():
    # The rule, derived from what each term was found to read, against the real graph of the step, for every
    # form x phase x weight at 0 or default: a new term, form or paradigm that leaves parameters out of the
    # synced backward must turn detection on, or DDP fails at the second step.
    from model import build_seg_model
    from utils.nets import find_unused_parameters
    from utils.steps import TrainStep

    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(1, 3, 16, 16, generator=g), "label": torch.randint(0, 3, (1, 16, 16), generator=g)}
    torch.manual_seed(0)
    net, teacher = build_seg_model("drn_d_22", num_classes=3), build_seg_model("drn_d_22", num_classes=3)
    discs = (torch.nn.Conv2d(3, 1, 1), torch.nn.Conv2d(3, 1, 1))  # which net parameters a pass reaches is all we see
    names = {name for name, _ in net.named_parameters()}
    grid, probe = _grid(), _SyncProbe(net)
    checked = 0
    for cases in grid.values():
        probe.synced = set()
        step = TrainStep(probe, discs, cases[0][3], torch.device("cpu"), teacher=teacher)
        step([batch], [{"image": batch["image"].flip(-1)}])
        net.zero_grad(set_to_none=True)
        skipped = names - probe.synced
        for phase, form, zeros, objective in cases:
            assert find_unused_parameters([objective]) == bool(skipped), (phase, form, zeros, sorted(skipped)[:3])
            checked += 1
    assert checked > 1900 and len(grid) > 100  # the whole grid, not a corner of it




def _once_on_rank(rank: int, store: str, out: str, fail: bool) -> None:
    import torch.distributed as dist

    from utils.errors import UserError
    from utils.runtime import DistInfo, once_per_node

    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=2)
    marker = Path(out) / "downloaded"

    def download():
        if fail:
            raise UserError("no source of the weights answered")
        marker.write_text(str(rank))

    try:  # one node, two processes: local ranks 0 and 1
        once_per_node(DistInfo(rank, 2, local_rank=rank), torch.device("cpu"), download)
        result = "found" if marker.exists() else "missing"
    except UserError as err:
        result = f"error: {err}"
    finally:
        dist.destroy_process_group()
    (Path(out) / f"rank{rank}.txt").write_text(result)


@pytest.mark.parametrize("fail", [False, True], ids=["download", "failed download"])
def test_weights_are_fetched_once_per_node_and_a_failure_stops_every_rank(tmp_path, fail):
    import torch.multiprocessing as mp

    mp.spawn(_once_on_rank, args=(f"file://{tmp_path / 'store'}", str(tmp_path), fail), nprocs=2)
    results = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    if fail:
        assert results == ["error: no source of the weights answered",
                           "error: stopped: local rank 0 of a node failed (its one-line error says why)"]
    else:  # local rank 0 alone downloaded, and the other process found the file once it went on
        assert results == ["found", "found"] and (tmp_path / "downloaded").read_text() == "0"


def test_a_distributed_run_fetches_the_imagenet_weights_through_local_rank_0(monkeypatch):
    import utils.nets as nets
    from utils.config import TrainConfig
    from utils.runtime import DistInfo

    calls = []
    monkeypatch.setattr(nets, "once_per_node", lambda info, device, action: calls.append((info.local_rank, action)))
    monkeypatch.setattr(nets, "build_seg_model", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("stop here")))
    with pytest.raises(RuntimeError, match="stop here"):
        nets.build_nets(TrainConfig(pretrained="imagenet"), torch.device("cpu"), DistInfo(1, 2, 1))
    assert [rank for rank, _ in calls] == [1]
    calls.clear()
    with pytest.raises(RuntimeError, match="stop here"):  # one process: the model's own fetch, no group
        nets.build_nets(TrainConfig(pretrained="imagenet"), torch.device("cpu"), DistInfo())
    assert calls == []
