"""The training loop shared by the three training scripts: phase after phase, step after step.

What a run holds and how it starts: utils/run.py; one step's gradients: utils/steps.py; the optimisers
and their schedule: utils/optim.py.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from model import save_final
from utils.config import TrainConfig
from utils.data import build_streams
from utils.errors import UserError
from utils.interrupts import Interrupted
from utils.run import Run, save, start_phase, start_run
from utils.runtime import init_distributed, is_main_process, shutdown_distributed, unwrap
from utils.steps import step_status


class NonFiniteLossError(UserError):
    """A loss became NaN or Inf more often than `--skip-nonfinite` allows."""


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


def train(cfg: TrainConfig) -> Path:
    """Run the training described by `cfg`; return the run folder holding last.pth and final.pth."""
    info, device = init_distributed(cfg.device, cfg.dist_timeout)
    try:
        run, state = start_run(cfg, info, device)
        try:
            with run.stop_signals:
                while run.phase_index < len(run.phases):
                    start_phase(run, state)  # fresh optimisers; when resuming, the saved ones and the RNG
                    state = None
                    train_phase(run)
                    if len(run.phases) > 1 and info.is_main:
                        save_final(run.folder / f"{run.phase.name}_phase_final.pth", unwrap(run.net))
                    run.phase_index, run.step = run.phase_index + 1, 0
            if info.is_main:
                save_final(run.folder / "final.pth", unwrap(run.net))
        finally:
            run.logger.close()
        return run.folder
    finally:
        shutdown_distributed(info)


def train_phase(run: Run) -> None:
    """Train the current phase from `run.step` to its stop, logging, validating and saving on the way."""
    cfg, phase = run.cfg, run.phase
    train_step, optimisers, statistics = run.make_step(), run.optimisers, run.running_statistics()
    samples = run.global_step * cfg.batch_size * cfg.iter_size
    src, tgt = build_streams(cfg, run.info, samples, run.datasets, phase.objective.uses_target)
    run.net.train()
    for d in run.discs:
        d.train()
    bar = _progress(run)
    try:
        while run.step < phase.num_steps_stop:
            lrs = optimisers.schedule(run.step)
            sources = [next(src) for _ in range(cfg.iter_size)]
            targets = [next(tgt) for _ in range(cfg.iter_size)] if tgt is not None else []
            statistics.keep()
            optimisers.zero_grad()
            losses = train_step(sources, targets)
            bad, stop_signal = step_status(losses, run.stop_signals.received, run.info.enabled)
            if bad is None:
                optimisers.step()
            else:
                _skip(run, bad, losses, statistics)
            run.step += 1
            run.global_step += 1
            _record(run, losses, lrs, bar)
            if run.step % cfg.save_pred_every == 0:
                save(run)
            if stop_signal is not None:  # every rank stops here, whichever received the signal
                raise Interrupted(stop_signal, save(run))
        if run.saved_step != run.global_step:
            save(run)
    finally:
        if bar is not None:
            bar.close()


def _skip(run: Run, bad: str, losses: dict[str, torch.Tensor], statistics) -> None:
    """Drop a step whose term `bad` is not finite (its gradients and what its forward did to the batch-norm
    statistics), or stop the run when --skip-nonfinite is used up."""
    run.optimisers.zero_grad()
    statistics.put_back()
    run.skipped += 1
    if run.skipped > run.cfg.skip_nonfinite:
        value = float(losses[bad])
        what = f"is {value}" if not math.isfinite(value) else "is not finite on another rank"
        kept = (f"last good checkpoint, step {run.saved_step}, kept in {run.folder / 'last.pth'}"
                if run.saved_step is not None else "no checkpoint was saved before it")
        raise NonFiniteLossError(f"loss term '{bad}' {what} at step {run.step + 1} of phase '{run.phase.name}'; "
                                 f"stopped ({kept}); --skip-nonfinite N tolerates N bad steps")


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
