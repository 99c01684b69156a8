"""A training run: its phases, what it holds while it trains, how it starts (every input checked before anything
is written, a resume read once) and what its checkpoint holds."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from model import AUX, MAIN
from utils.checkpoint import TRAIN_FORMAT, remove_interrupted_saves, save_training_state
from utils.cli import check_output
from utils.config import TrainConfig, run_name
from utils.cpu import settle_form, torch_form
from utils.data import build_datasets, signal_dataset, val_dataset
from utils.errors import ConfigError
from utils.interrupts import StopSignals
from utils.logger import RunLogger
from utils.nets import build_nets, wrap_ddp
from utils.objective import ADAPTATION, PARADIGMS, Objective, PhaseSpec, build_objective, knobs_of
from utils.optim import Optimisers
from utils.resume import resume_run
from utils.runtime import DistInfo, barrier, rng_state, seed_everything, set_rng_state, unwrap
from utils.settings import declared
from utils.steps import RunningStatistics, TrainStep
from utils.validation import Validator, check_selection, kept_criteria


@dataclass(frozen=True)
class Phase:
    """A phase of this run: its terms (`spec`) and objective, the length of its poly schedule, where it stops."""

    spec: PhaseSpec
    objective: Objective
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
    phases = []
    for index, spec in enumerate(PARADIGMS[cfg.paradigm] if cfg.distill else ADAPTATION):
        steps = spec.length(cfg)
        objective = build_objective(spec, knobs_of(cfg), cfg.num_classes)
        phases.append(Phase(spec, objective, steps, min(cfg.num_steps_stop, steps) if index == 0 else steps))
    return phases


@dataclass
class Run:
    """What a training run holds while it trains: settings, nets, optimisers, where it writes, how far it is."""

    cfg: TrainConfig
    info: DistInfo
    device: torch.device
    folder: Path
    phases: list[Phase]
    net: nn.Module
    discs: tuple[nn.Module, nn.Module]
    teacher: nn.Module | None
    datasets: tuple[Dataset, Dataset | None]
    logger: RunLogger
    validator: Validator
    optimisers: Optimisers
    stop_signals: StopSignals = dataclasses.field(default_factory=StopSignals)
    phase_index: int = 0
    step: int = 0            # within the phase
    global_step: int = 0     # over the phases
    skipped: int = 0         # steps skipped for a non-finite loss
    saved_step: int | None = None  # global step of the last save of last.pth, None before the first

    @property
    def phase(self) -> Phase:
        """The phase being trained."""
        return self.phases[self.phase_index]

    def make_step(self) -> TrainStep:
        """The training step of the current phase, on the run's nets and loss scaling."""
        cfg = self.cfg
        return TrainStep(self.net, self.discs, self.phase.objective, self.device, amp=cfg.amp, teacher=self.teacher,
                         channels_last=cfg.channels_last, scale=self.optimisers.scale)

    def running_statistics(self) -> RunningStatistics:
        """The net's batch-norm statistics, to keep before each step and put back after a skipped one."""
        return RunningStatistics(unwrap(self.net))


def start_run(cfg: TrainConfig, info: DistInfo, device: torch.device) -> tuple[Run, dict | None]:
    """Check every input, build the nets (from --resume's state when given), the optimisers and the logger.

    Returns the run and, when resuming, its saved training state (optimisers and RNG are restored when its
    phase starts).
    """
    state = None
    if cfg.resume:
        cfg, state = resume_run(cfg)
    # the CPU's capabilities and the form trained, before anything is written; no emulated bf16 unless asked for
    settle_form(device, cfg.amp, cfg.allow_slow_bf16, f"training in {torch_form(cfg.amp, cfg.channels_last)}",
                show=info.is_main)
    folder = Path(cfg.snapshot_dir or Path("snapshots") / run_name(cfg))
    phases = plan_phases(cfg)
    check_selection(cfg)
    # every input is checked before anything is written into the run folder
    source, target, holdout = build_datasets(cfg, info, any(p.objective.uses_target for p in phases))
    validates = cfg.eval_every and info.is_main  # rank 0 validates
    val_set = val_dataset(cfg) if validates else None
    signal_set = signal_dataset(cfg, target) if validates else None
    if info.is_main:
        check_output(folder, "--snapshot-dir", folder=True)  # created by the logger, once every input is checked
        if not cfg.resume and (folder / "last.pth").exists():
            raise ConfigError(f"--snapshot-dir {folder}: it already holds a run (last.pth); continue it with "
                              f"--resume {folder / 'last.pth'} or choose another folder")
    seed_everything(cfg.random_seed, cfg.deterministic, device)
    net, discs, teacher = build_nets(cfg, device, info)
    if state is not None:
        unwrap(net).load_state_dict(state["net"])
        discs[AUX].load_state_dict(state["d1"])
        discs[MAIN].load_state_dict(state["d2"])
    net, discs = wrap_ddp(cfg, info, device, net, discs, [p.objective for p in phases])
    if info.is_main:  # every input is checked: the folder may now be touched
        remove_interrupted_saves(folder)
    resumed_at = None if state is None else state["global_step"]
    logger = RunLogger(folder, enabled=info.is_main, resumed_at=resumed_at)
    logger.write_run_info(cfg.to_dict(), {"run_name": folder.name, "world_size": info.world_size,
                                          "device": str(device), "phases": [p.name for p in phases],
                                          "argv": [cfg.script, *cfg.argv]},
                          kept=[d.name for d in declared(TrainConfig) if d.setting.resume != "invocation"])
    # Always there, so that each criterion's best so far travels through every save, even while a resumed
    # run does not validate; it scores the net only with --eval-every.
    validator = Validator(val_set, signal_set, holdout if validates else None, teacher=teacher, source=cfg.source,
                          num_classes=cfg.num_classes, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                          device=device, amp=cfg.amp, channels_last=cfg.channels_last, limit=cfg.eval_limit,
                          keep=kept_criteria(cfg), logger=logger, folder=folder, info=info)
    optimisers = Optimisers(net, discs, cfg, device.type)
    run = Run(cfg, info, device, folder, phases, net, discs, teacher, (source, target), logger, validator,
              optimisers)
    if state is not None:
        run.phase_index, run.step, run.global_step = state["phase"], state["step"], state["global_step"]
        run.skipped, run.saved_step = state.get("nonfinite_skipped", 0), state["global_step"]
        validator.load_state_dict(state)  # so that each kept snapshot competes with the run's best so far
    return run, state


def start_phase(run: Run, state: dict | None = None) -> None:
    """Fresh optimisers and poly schedule for the current phase; with `state` (a resume), the saved ones and
    every random generator as they were."""
    run.optimisers.start_phase(run.phase.num_steps, run.phase.objective.adversarial_levels)
    if state is not None:
        run.optimisers.load_state_dict(state)
        set_rng_state(state["rng"], run.device)


def training_state(run: Run) -> dict:
    """Everything needed to continue this run exactly where it is (with each selection criterion's best so far)."""
    core = unwrap(run.net)
    return {
        "format": TRAIN_FORMAT, "arch": core.arch, "aux_layer": core.aux_layer, "num_classes": core.num_classes,
        "net": core.state_dict(), "d1": unwrap(run.discs[AUX]).state_dict(),
        "d2": unwrap(run.discs[MAIN]).state_dict(),
        **run.optimisers.state_dict(),
        "phase": run.phase_index, "step": run.step, "global_step": run.global_step,
        "nonfinite_skipped": run.skipped, "rng": rng_state(run.device), "config": run.cfg.to_dict(),
        "best_val_mIoU": run.validator.best_so_far(), "selection": run.validator.state_dict(),
    }


def save(run: Run) -> Path:
    """Write last.pth (rank 0) and wait for every rank; return its path."""
    path = run.folder / "last.pth"
    if run.info.is_main:
        path = save_training_state(training_state(run), run.folder, run.global_step, run.cfg.keep_last)
    barrier(run.info)
    run.saved_step = run.global_step
    return path
