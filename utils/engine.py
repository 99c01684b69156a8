"""The training loop shared by the three training scripts: data streams, phases, checkpoints, logs, validation."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from dataset import build_dataset
from dataset.sampling import StreamSampler, seed_worker
from model import DEFAULT_AUX_LAYER, Discriminator, build_from_checkpoint, build_seg_model, load_weights, save_final
from utils.checkpoint import TRAIN_FORMAT, load_training_state, save_training_state
from utils.cli import check_output
from utils.config import TrainConfig, run_name
from utils.cpu import settle_form, torch_form
from utils.distributed import find_unused_parameters
from utils.errors import CheckpointError, ConfigError, UserError
from utils.evaluate import eval_collate
from utils.logger import RunLogger
from utils.objective import ADAPTATION, PARADIGMS, Objective, PhaseSpec, build_objective, knob_values
from utils.runtime import (
    DistInfo,
    barrier,
    init_distributed,
    is_main_process,
    rng_state,
    seed_everything,
    set_rng_state,
    shutdown_distributed,
    unwrap,
    uses_cuda,
)
from utils.steps import TrainStep, freeze_teacher, poly_lr, set_lr, step_status


class NonFiniteLossError(UserError):
    """A loss became NaN or Inf more often than `--skip-nonfinite` allows."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived; the loop saved `last.pth` and stops with `exit_code`."""

    def __init__(self, signum: int, path: Path):
        self.signum, self.path = signum, path
        self.exit_code = 128 + signum
        super().__init__(f"stopped by signal {signum}; state saved to {path}")


@dataclass(frozen=True)
class Phase:
    """A phase of this run: its terms (`spec`), the length of its poly schedule and where it stops."""

    spec: PhaseSpec
    num_steps: int
    num_steps_stop: int

    @property
    def name(self) -> str:
        """The phase's name, as in log.jsonl ('adapt', 'both', 'target', ...)."""
        return self.spec.name


def plan_phases(cfg: TrainConfig) -> list[Phase]:
    """The phases of a run: adaptation, or the distillation paradigm's phases (utils/objective.py PARADIGMS).

    `--num-steps-stop` may end the first phase before its schedule does; later phases run their full length.
    """
    specs = PARADIGMS[cfg.paradigm] if cfg.distill else ADAPTATION
    phases = []
    for index, spec in enumerate(specs):
        steps = getattr(cfg, spec.steps)
        phases.append(Phase(spec, steps, min(cfg.num_steps_stop, steps) if index == 0 else steps))
    return phases


def phase_objective(cfg: TrainConfig, phase: Phase) -> Objective:
    """The weighted terms of `phase` under `cfg`'s knobs."""
    return build_objective(phase.spec, knob_values(cfg))


# --- data -----------------------------------------------------------------------------------------------
def _stream(dataset, cfg: TrainConfig, info: DistInfo, start: int, seed: int) -> Iterator[dict]:
    # Each sample carries its own augmentation seed (a function of seed, epoch, position), so flips and
    # crops neither depend on the worker count nor restart on --resume. The loader's generator only
    # seeds the workers' NumPy/random (seed_worker); derive it from (seed, start) without collisions.
    sampler = StreamSampler(len(dataset), seed, start=start, rank=info.rank, world_size=info.world_size,
                            with_seeds=True)
    worker_seed = int(np.random.SeedSequence([seed, start, info.rank]).generate_state(1)[0])
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                        drop_last=True, pin_memory=uses_cuda(cfg.device), worker_init_fn=seed_worker,
                        generator=torch.Generator().manual_seed(worker_seed),
                        persistent_workers=cfg.num_workers > 0)
    return iter(loader)


def build_datasets(cfg: TrainConfig, info: DistInfo, need_target: bool):
    """The source and (when `need_target`) target datasets; `DatasetError`/`ConfigError` before any training."""
    source = build_dataset(cfg.source, cfg.data_dir, cfg.source_split, list_path=cfg.data_list,
                           size=cfg.input_size, labels=True, random_mirror=cfg.random_mirror,
                           random_scale=cfg.random_scale, exclude=cfg.exclude)
    if len(source) < cfg.batch_size * info.world_size:
        raise ConfigError(f"--batch-size {cfg.batch_size}: the source list has only {len(source)} images")
    if not need_target:
        return source, None
    target = build_dataset(cfg.target, cfg.data_dir_target, cfg.target_split, list_path=cfg.data_list_target,
                           size=cfg.input_size_target, labels=False, random_mirror=cfg.random_mirror,
                           random_scale=cfg.random_scale)
    if len(target) < cfg.batch_size * info.world_size:
        raise ConfigError(f"--batch-size {cfg.batch_size}: the target list has only {len(target)} images")
    return source, target


def build_streams(cfg: TrainConfig, info: DistInfo, samples_drawn: int, need_target: bool, datasets=None):
    """Endless source (and target) batch iterators that continue after `samples_drawn` samples per rank."""
    source, target = datasets or build_datasets(cfg, info, need_target)
    src = _stream(source, cfg, info, samples_drawn, cfg.random_seed)
    if not need_target:
        return src, None
    return src, _stream(target, cfg, info, samples_drawn, cfg.random_seed + 1)


# --- models ---------------------------------------------------------------------------------------------
def build_models(cfg: TrainConfig, device: torch.device):
    """The segmentation net (initialised per --pretrained / --restore-from), D1, D2 and the teacher."""
    pretrained = None if cfg.pretrained == "none" or cfg.restore_from or cfg.resume else cfg.pretrained
    try:
        net = build_seg_model(cfg.arch, num_classes=cfg.num_classes, aux_layer=cfg.aux_layer, pretrained=pretrained,
                              zero_residual=cfg.zero_init_residual)
    except CheckpointError as err:
        raise CheckpointError(f"--pretrained {cfg.pretrained}: {err} (--pretrained PATH takes a downloaded file; "
                              "--pretrained none starts from random weights)") from err
    if cfg.restore_from and not cfg.resume:
        load_weights(net, cfg.restore_from, allow_pickle=cfg.allow_pickle)
    discs = (Discriminator(cfg.num_classes), Discriminator(cfg.num_classes))
    teacher = None
    if cfg.distill:
        teacher = build_from_checkpoint(cfg.teacher, allow_pickle=cfg.allow_pickle)
        if teacher.num_classes != cfg.num_classes:
            raise CheckpointError(f"--teacher {cfg.teacher}: the teacher predicts {teacher.num_classes} classes, "
                                  f"the student {cfg.num_classes}")
        freeze_teacher(teacher.to(device))
    net, discs = net.to(device), tuple(d.to(device) for d in discs)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher = teacher.to(memory_format=torch.channels_last)
    return net, discs, teacher


def make_optimizers(cfg: TrainConfig, net: nn.Module, discs):
    """SGD for the net, Adam for each discriminator (docs/method.md#training-iteration)."""
    opt = torch.optim.SGD(net.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    d_opts = tuple(torch.optim.Adam(d.parameters(), lr=cfg.learning_rate_d, betas=(0.9, 0.99)) for d in discs)
    return opt, d_opts


def _wrap_ddp(cfg: TrainConfig, info: DistInfo, device: torch.device, net: nn.Module, discs):
    if cfg.sync_bn and device.type != "cuda":  # torch's SyncBatchNorm refuses CPU tensors at the first forward
        raise ConfigError("--sync-bn needs CUDA devices (torch's SyncBatchNorm has no CPU kernel); "
                          "drop it for a CPU run")
    if not info.enabled:
        return net, discs
    from torch.nn.parallel import DistributedDataParallel as DDP

    if cfg.sync_bn:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    ids = [device.index] if device.type == "cuda" else None
    unused = find_unused_parameters(phase_objective(cfg, p) for p in plan_phases(cfg))  # a term may skip a head
    net = DDP(net, device_ids=ids, find_unused_parameters=unused)
    discs = tuple(DDP(d, device_ids=ids) for d in discs)
    return net, discs


# --- the run's state -----------------------------------------------------------------------------------
@dataclass
class Run:
    """What a training run holds while it trains: settings, nets, where it writes, and how far it is."""

    cfg: TrainConfig
    info: DistInfo
    device: torch.device
    folder: Path
    phases: list[Phase]
    net: nn.Module
    discs: tuple[nn.Module, nn.Module]
    teacher: nn.Module | None
    datasets: tuple
    logger: RunLogger
    validator: _Validator
    scaler: torch.amp.GradScaler  # fp16 loss scaling, carried from phase to phase (disabled otherwise)
    signals: _Signals = dataclasses.field(default_factory=lambda: _Signals())
    step_fn: TrainStep | None = None
    phase_index: int = 0
    step: int = 0          # within the phase
    global_step: int = 0   # over the phases
    skipped: int = 0       # steps skipped for a non-finite loss

    @property
    def phase(self) -> Phase:
        """The phase being trained."""
        return self.phases[self.phase_index]


# --- checkpoints ----------------------------------------------------------------------------------------
def training_state(run: Run) -> dict:
    """Everything needed to continue this run exactly where it is (with the best val mIoU so far)."""
    core, step_fn = unwrap(run.net), run.step_fn
    best = run.validator.best if math.isfinite(run.validator.best) else None
    return {
        "format": TRAIN_FORMAT, "arch": core.arch, "aux_layer": core.aux_layer, "num_classes": core.num_classes,
        "net": core.state_dict(), "d1": unwrap(run.discs[0]).state_dict(), "d2": unwrap(run.discs[1]).state_dict(),
        "optimizer": step_fn.optimizer.state_dict(), "optimizer_d1": step_fn.d_optimizers[0].state_dict(),
        "optimizer_d2": step_fn.d_optimizers[1].state_dict(), "scaler": run.scaler.state_dict(),
        "phase": run.phase_index, "step": run.step, "global_step": run.global_step,
        "nonfinite_skipped": run.skipped, "rng": rng_state(), "config": run.cfg.to_dict(), "best_val_mIoU": best,
    }


def _check_resume(cfg: TrainConfig, state: dict) -> None:
    asked = {"arch": cfg.arch, "num_classes": cfg.num_classes,
             "aux_layer": DEFAULT_AUX_LAYER.get(cfg.arch) if cfg.aux_layer is None else cfg.aux_layer}
    for key, value in asked.items():
        if key in state and state[key] != value:
            raise CheckpointError(f"--resume {cfg.resume}: it was trained with {key}={state[key]!r}, "
                                  f"this run asks for {value!r}")
    saved = state.get("config", {})
    if saved.get("teacher") and saved.get("paradigm") != cfg.paradigm and cfg.distill:
        raise CheckpointError(f"--resume {cfg.resume}: it ran --paradigm {saved.get('paradigm')}, "
                              f"this run asks for {cfg.paradigm}")


def _save(run: Run) -> Path:
    """Write last.pth (rank 0) and wait for every rank; return its path."""
    path = run.folder / "last.pth"
    if run.info.is_main:
        path = save_training_state(training_state(run), run.folder, run.global_step, run.cfg.keep_last)
    barrier(run.info)
    return path


def _restore(run: Run, state: dict) -> None:
    """Put the optimizers, the loss scaler and every random generator back as `state` holds them."""
    step_fn = run.step_fn
    step_fn.optimizer.load_state_dict(state["optimizer"])
    step_fn.d_optimizers[0].load_state_dict(state["optimizer_d1"])
    step_fn.d_optimizers[1].load_state_dict(state["optimizer_d2"])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])


# --- the loop -------------------------------------------------------------------------------------------
class _Signals:
    """Turns SIGINT/SIGTERM into a flag the loop checks after each step."""

    def __init__(self):
        self.received: int | None = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def train(cfg: TrainConfig) -> Path:
    """Run the training described by `cfg`; return the run folder holding last.pth and final.pth."""
    info, device = init_distributed(cfg.device, cfg.dist_timeout)
    try:
        return _train(cfg, info, device)
    finally:
        shutdown_distributed(info)


def _train(cfg: TrainConfig, info: DistInfo, device: torch.device) -> Path:
    run, state = _start(cfg, info, device)
    try:
        with run.signals:
            while run.phase_index < len(run.phases):
                run.step_fn = _make_step(run)
                if state is not None:  # optimizers and RNG once, for the phase we resume in
                    _restore(run, state)
                    state = None
                _run_phase(run)
                if len(run.phases) > 1 and info.is_main:
                    save_final(run.folder / f"{run.phase.name}_phase_final.pth", unwrap(run.net))
                run.phase_index, run.step = run.phase_index + 1, 0
        if info.is_main:
            save_final(run.folder / "final.pth", unwrap(run.net))
        barrier(info)
    finally:
        run.logger.close()
    return run.folder


def _start(cfg: TrainConfig, info: DistInfo, device: torch.device) -> tuple[Run, dict | None]:
    """Check every input, build the nets (from --resume's state when given) and the run folder's logger."""
    settle_form(device, cfg.amp, cfg.allow_slow_bf16, f"training in {torch_form(cfg.amp, cfg.channels_last)}",
                show=info.is_main)
    folder = Path(cfg.snapshot_dir or Path("snapshots") / run_name(cfg))
    phases = plan_phases(cfg)
    # every input is checked before anything is written into the run folder
    datasets = build_datasets(cfg, info, any(phase_objective(cfg, p).uses_target for p in phases))
    val_set = _val_dataset(cfg) if cfg.eval_every and info.is_main else None
    if info.is_main:
        check_output(folder, "--snapshot-dir", folder=True)  # created by the logger, once every input is checked
        if not cfg.resume and (folder / "last.pth").exists():
            raise ConfigError(f"--snapshot-dir {folder}: it already holds a run (last.pth); continue it with "
                              f"--resume {folder / 'last.pth'} or choose another folder")
    seed_everything(cfg.random_seed, cfg.deterministic, device)
    state = load_training_state(cfg.resume) if cfg.resume else None
    if state is not None:
        _check_resume(cfg, state)
    net, discs, teacher = build_models(cfg, device)
    if state is not None:
        unwrap(net).load_state_dict(state["net"])
        discs[0].load_state_dict(state["d1"])
        discs[1].load_state_dict(state["d2"])
    net, discs = _wrap_ddp(cfg, info, device, net, discs)
    logger = RunLogger(folder, enabled=info.is_main)
    logger.write_run_info(cfg.to_dict(), {"run_name": folder.name, "world_size": info.world_size,
                                          "device": str(device), "phases": [p.name for p in phases]})
    # Always there, so that the best val score so far travels through every save, even while a resumed
    # run does not validate; it scores the net only with --eval-every.
    validator = _Validator(cfg, device, logger, folder, info, val_set)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    run = Run(cfg, info, device, folder, phases, net, discs, teacher, datasets, logger, validator, scaler)
    if state is not None:
        run.phase_index, run.step, run.global_step = state["phase"], state["step"], state["global_step"]
        run.skipped = state.get("nonfinite_skipped", 0)
        if state.get("best_val_mIoU") is not None:
            validator.best = state["best_val_mIoU"]  # so that --keep-best compares with the run's best so far
    return run, state


def _make_step(run: Run) -> TrainStep:
    """The step of the current phase: its objective, fresh optimizers (each phase restarts them and its
    poly schedule), the run's nets and loss scaler."""
    opt, d_opts = make_optimizers(run.cfg, run.net, run.discs)
    return TrainStep(run.net, run.discs, opt, d_opts, phase_objective(run.cfg, run.phase), run.device,
                     amp=run.cfg.amp, teacher=run.teacher, channels_last=run.cfg.channels_last, scaler=run.scaler)


def _run_phase(run: Run) -> None:
    """Train the current phase from `run.step` to its stop, logging, validating and saving on the way."""
    cfg, phase, step_fn = run.cfg, run.phase, run.step_fn
    src, tgt = build_streams(cfg, run.info, run.global_step * cfg.batch_size * cfg.iter_size,
                             step_fn.objective.uses_target, run.datasets)
    run.net.train()
    for d in run.discs:
        d.train()
    bar = _progress(run)
    last_saved = run.step
    try:
        while run.step < phase.num_steps_stop:
            lrs = _set_learning_rates(run)
            sources = [next(src) for _ in range(cfg.iter_size)]
            targets = [next(tgt) for _ in range(cfg.iter_size)] if tgt is not None else []
            losses = step_fn(sources, targets)
            bad, stop_signal = step_status(losses, run.signals.received, run.info.enabled)
            if bad is None:
                step_fn.apply()
            else:
                _skip(run, bad, losses)
            run.step += 1
            run.global_step += 1
            _record(run, losses, lrs, bar)
            if run.step % cfg.save_pred_every == 0:
                _save(run)
                last_saved = run.step
            if stop_signal is not None:  # every rank stops here, whichever received the signal
                raise Interrupted(stop_signal, _save(run))
        if run.step != last_saved:
            _save(run)
    finally:
        if bar is not None:
            bar.close()


def _set_learning_rates(run: Run) -> dict[str, float]:
    """The poly schedule of the current phase for the net and both discriminators."""
    cfg, step_fn = run.cfg, run.step_fn
    lr = poly_lr(cfg.learning_rate, run.step, run.phase.num_steps, cfg.power)
    lr_d = poly_lr(cfg.learning_rate_d, run.step, run.phase.num_steps, cfg.power)
    set_lr(step_fn.optimizer, lr)
    for opt in step_fn.d_optimizers:
        set_lr(opt, lr_d)
    return {"lr": lr, "lr_D": lr_d}


def _skip(run: Run, bad: str, losses: dict[str, torch.Tensor]) -> None:
    """Drop a step whose term `bad` is not finite, or stop the run when --skip-nonfinite is used up."""
    run.step_fn.discard()
    run.skipped += 1
    if run.skipped > run.cfg.skip_nonfinite:
        value = float(losses[bad])
        what = f"is {value}" if not math.isfinite(value) else "is not finite on another rank"
        raise NonFiniteLossError(
            f"loss term '{bad}' {what} at step {run.step + 1} of phase '{run.phase.name}'; stopped (last good "
            f"checkpoint kept in {run.folder}); --skip-nonfinite N tolerates N bad steps")


def _record(run: Run, losses: dict[str, torch.Tensor], lrs: dict[str, float], bar) -> None:
    """After a step: the progress bar, log.jsonl every --log-every steps, validation every --eval-every."""
    cfg, step, end = run.cfg, run.step, run.phase.num_steps_stop
    if bar is not None:
        bar.update(1)
    if step % cfg.log_every == 0 or step == end:
        values = {k: float(v) for k, v in losses.items()} | lrs
        run.logger.log(run.global_step, values, phase=run.phase.name)
        if bar is not None:
            bar.set_postfix({k: f"{v:.3g}" for k, v in values.items() if k in ("total", "seg_main_src", "lr")})
    if cfg.eval_every and (step % cfg.eval_every == 0 or step == end):
        run.validator(run.net, run.global_step)  # before a save, so that the checkpoint knows the best score
        run.net.train()


def _progress(run: Run):
    if not (run.cfg.progress and run.info.is_main):
        return None
    from tqdm import tqdm

    return tqdm(total=run.phase.num_steps_stop, initial=run.step, desc=f"{run.cfg.arch} {run.phase.name}",
                dynamic_ncols=True, mininterval=1.0)


def _val_dataset(cfg: TrainConfig):
    """The target's val split for --eval-every, built (and so checked) before training starts."""
    return build_dataset(cfg.target, cfg.data_dir_target, cfg.val_split, labels=True, size=cfg.eval_size,
                         label_size="full")


class _Validator:
    """Scores the net on the target's val split during training (rank 0), logs val/mIoU, keeps best.pth."""

    def __init__(self, cfg: TrainConfig, device: torch.device, logger: RunLogger, folder: Path, info: DistInfo,
                 dataset=None):
        self.cfg, self.device, self.logger, self.folder, self.info = cfg, device, logger, folder, info
        self.best = -math.inf
        self._loader = None if dataset is None else DataLoader(
            dataset, batch_size=cfg.batch_size, collate_fn=eval_collate, num_workers=min(2, cfg.num_workers))

    def __call__(self, net: nn.Module, global_step: int) -> None:
        if self.info.is_main:
            from utils.evaluate import evaluate

            start = time.time()
            result = evaluate(unwrap(net), self._loader, self.device, limit=self.cfg.eval_limit, amp=self.cfg.amp,
                              channels_last=self.cfg.channels_last, progress=False)
            self.logger.log(global_step, {"val/mIoU": result["mIoU"], "val/pixel_acc": result["pixel_acc"],
                                          "val/seconds": time.time() - start})
            if self.cfg.keep_best and result["mIoU"] > self.best:
                self.best = result["mIoU"]
                save_final(self.folder / "best.pth", unwrap(net))
        barrier(self.info)


def run_training(cfg: TrainConfig) -> int:
    """Train, print where the results are, and return the exit status (128 + signal when interrupted)."""
    try:
        folder = train(cfg)
    except Interrupted as stop:
        if is_main_process():
            print(f"{cfg.script}: {stop}; continue with --resume {stop.path}")
        return stop.exit_code
    if is_main_process():  # one line per run, not one per torchrun worker
        print(f"{cfg.script}: done; weights in {folder / 'final.pth'}, resumable state in {folder / 'last.pth'}")
    return 0
