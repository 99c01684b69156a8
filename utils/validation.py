"""Validation while training (`--eval-every`): the target's val mIoU when the target has labels (the oracle),
the label-free selection signals on fixed subsets (docs/selection.md), one log record, and the snapshot each
kept criterion picks (`--select`, `--keep-best`)."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from model import save_final
from utils.config import TrainConfig
from utils.criteria import CRITERIA, LAST, ORACLE, checkpoint_name, criterion_value, improves
from utils.errors import ConfigError
from utils.evaluate import eval_collate, evaluate, validation_scores
from utils.logger import RunLogger
from utils.runtime import DistInfo, barrier, unwrap
from utils.signals import compute_signals, source_miou

OLD_ORACLE_NAME = "best.pth"  # what --keep-best wrote before selection existed

# What each criterion needs besides --eval-every: (is it there, the flags that give it)
_NEEDS = {
    "oracle": (lambda cfg: cfg.val_split is not None, "the target's val labels (--val-split is none)"),
    "source_mIoU": (lambda cfg: cfg.source_holdout > 0, "a source hold-out (--source-holdout N)"),
    "agree_teacher": (lambda cfg: cfg.distill, "a teacher (the distillation script)"),
}
_SIGNALS_NEED = (lambda cfg: cfg.signal_images > 0, "target images for the signals (--signal-images N)")


def kept_criteria(cfg: TrainConfig) -> tuple[str, ...]:
    """The criteria whose snapshot the run keeps: `--select` (unless 'last', which is final.pth) and, with the
    older `--keep-best`, the oracle."""
    kept = [cfg.select] if cfg.select != LAST else []
    if cfg.keep_best:
        kept.append("oracle")
    return tuple(dict.fromkeys(kept))


def check_selection(cfg: TrainConfig) -> None:
    """`ConfigError` naming the flags when `--select`/`--keep-best` asks for what the run does not compute, or
    `--eval-every` has nothing to score. (A resumed run may train a stretch without validating.)"""
    for name in kept_criteria(cfg):
        flag = "--keep-best" if name == "oracle" and cfg.select != "oracle" else f"--select {name}"
        if not cfg.eval_every and not cfg.resume:
            raise ConfigError(f"{flag}: the criteria are scored at each validation; give --eval-every N")
        present, what = _NEEDS.get(name, _SIGNALS_NEED)
        if cfg.eval_every and not present(cfg):
            raise ConfigError(f"{flag}: needs {what}")
    if cfg.eval_every and cfg.val_split is None and not cfg.signal_images and not cfg.source_holdout:
        raise ConfigError(f"--eval-every {cfg.eval_every}: nothing to score (--val-split none, --signal-images 0, "
                          "--source-holdout 0)")


class Validator:
    """Scores the net at each validation (rank 0; the other ranks wait), logs every score in one record, and
    keeps the snapshot of each criterion in `keep` as `selected_<name>.pth` when it improves.

    A SYNTHIA-trained net is also scored on SYNTHIA's 16 and 13 classes (val/mIoU16, val/mIoU13): its oracle
    is the 16-class mIoU (`utils.criteria.oracle_key`). The best value (and step) of every criterion travels
    through each save (`state_dict`), so that a resumed run compares with its bests so far; the oracle's is
    also `best_val_mIoU`, as before selection existed.
    """

    def __init__(self, val_set: Dataset | None, signal_set: Dataset | None, holdout_set: Dataset | None, *,
                 teacher: nn.Module | None, source: str, num_classes: int, batch_size: int, num_workers: int,
                 device: torch.device, amp: str, channels_last: bool, limit: int | None, keep: tuple[str, ...],
                 logger: RunLogger, folder: Path, info: DistInfo):
        self.teacher, self.source, self.num_classes, self.device, self.amp = teacher, source, num_classes, device, amp
        self.channels_last, self.limit, self.keep = channels_last, limit, keep
        self.logger, self.folder, self.info = logger, folder, info
        self.bests: dict[str, tuple[float, int]] = {}  # criterion -> (best value, its global step)
        self._val, self._signals, self._holdout = (
            None if ds is None else DataLoader(ds, batch_size=batch_size, collate_fn=eval_collate,
                                               num_workers=min(2, num_workers))
            for ds in (val_set, signal_set, holdout_set))

    def __call__(self, net: nn.Module, global_step: int) -> None:
        """Score `net` now, log the scores, keep the snapshot of each kept criterion that improved."""
        if self.info.is_main:
            values = self.score(net)
            self.logger.log(global_step, values)
            self.keep_improved(net, values, global_step)
        barrier(self.info)

    def score(self, net: nn.Module) -> dict[str, float]:
        """The val scores (with target labels), the label-free signals and the source hold-out's mIoU, by log key."""
        values: dict[str, float] = {}
        if self._val is not None:
            start = time.time()
            result = evaluate(unwrap(net), self._val, self.device, limit=self.limit, amp=self.amp,
                              channels_last=self.channels_last, progress=False)
            _, extra = validation_scores(self.source, result)  # SYNTHIA: its 16 classes (and 13)
            values |= {ORACLE: result["mIoU"], **extra, "val/pixel_acc": result["pixel_acc"],
                       "val/seconds": time.time() - start}
        if self._signals is not None:
            values |= compute_signals(net, self._signals, self.device, self.teacher, amp=self.amp,
                                      channels_last=self.channels_last)
        if self._holdout is not None:
            values |= source_miou(net, self._holdout, self.device, num_classes=self.num_classes, amp=self.amp,
                                  channels_last=self.channels_last)
        return values

    def keep_improved(self, net: nn.Module, values: dict[str, float], global_step: int) -> None:
        """Update every criterion's best with `values`; save the net for each kept criterion that improved."""
        for name, criterion in CRITERIA.items():
            value = criterion_value(criterion, values)
            best = self.bests.get(name)
            if improves(criterion, value, None if best is None else best[0]):
                self.bests[name] = (value, global_step)
                if name in self.keep:
                    save_final(self.folder / checkpoint_name(name), unwrap(net))

    def best_so_far(self) -> float | None:
        """The best val mIoU seen (None before the first validation with labels): `best_val_mIoU` of a checkpoint."""
        best = self.bests.get("oracle")
        return None if best is None else best[0]

    def state_dict(self) -> dict:
        """Each criterion's best value and step so far, as a checkpoint keeps them."""
        return {"bests": {name: {"value": value, "step": step} for name, (value, step) in self.bests.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Continue with a checkpoint's bests (`state`: the training state of last.pth; an older one holds only
        `best_val_mIoU`). On rank 0, a kept criterion whose file is not in the run folder starts over, so
        that its next validation writes it (a `--select` changed on resume); an older run's best.pth is
        renamed selected_oracle.pth first."""
        saved = (state.get("selection") or {}).get("bests")
        if saved is not None:
            self.bests = {name: (float(b["value"]), int(b["step"])) for name, b in saved.items() if name in CRITERIA}
        elif state.get("best_val_mIoU") is not None and math.isfinite(state["best_val_mIoU"]):
            # an older checkpoint does not say at which step its best was: the resume's step stands in
            self.bests = {"oracle": (float(state["best_val_mIoU"]), int(state.get("global_step", 0)))}
        if not self.info.is_main:
            return
        old, new = self.folder / OLD_ORACLE_NAME, self.folder / checkpoint_name("oracle")
        if "oracle" in self.keep and old.is_file() and not new.exists():
            os.replace(old, new)
        for name in self.keep:
            if not (self.folder / checkpoint_name(name)).is_file():
                self.bests.pop(name, None)
