"""Validation while training (`--eval-every`): the net scored on the target's val split, best.pth kept."""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from model import save_final
from utils.evaluate import eval_collate, evaluate, validation_scores
from utils.logger import RunLogger
from utils.runtime import DistInfo, barrier, unwrap


class Validator:
    """Scores the net on the target's val split (rank 0), logs val/mIoU, keeps best.pth with --keep-best.

    A SYNTHIA-trained net is also scored on SYNTHIA's 16 and 13 classes (val/mIoU16, val/mIoU13), and its best
    is kept by the 16-class mIoU.

    `best` travels through every save, so that a resumed run compares with its best score so far.
    """

    def __init__(self, dataset: Dataset | None, *, source: str, batch_size: int, num_workers: int,
                 device: torch.device, amp: str, channels_last: bool, limit: int | None, keep_best: bool,
                 logger: RunLogger, folder: Path, info: DistInfo):
        self.source, self.device, self.amp, self.channels_last, self.limit = source, device, amp, channels_last, limit
        self.keep_best, self.logger, self.folder, self.info = keep_best, logger, folder, info
        self.best = -math.inf
        self._loader = None if dataset is None else DataLoader(
            dataset, batch_size=batch_size, collate_fn=eval_collate, num_workers=min(2, num_workers))

    def __call__(self, net: nn.Module, global_step: int) -> None:
        """Score `net` now (rank 0; the other ranks wait), log the scores, keep best.pth when it improved."""
        if self.info.is_main:
            start = time.time()
            result = evaluate(unwrap(net), self._loader, self.device, limit=self.limit, amp=self.amp,
                              channels_last=self.channels_last, progress=False)
            score, extra = validation_scores(self.source, result)  # SYNTHIA: its 16 classes (and 13)
            self.logger.log(global_step, {"val/mIoU": result["mIoU"], **extra, "val/pixel_acc": result["pixel_acc"],
                                          "val/seconds": time.time() - start})
            if self.keep_best and score > self.best:
                self.best = score
                save_final(self.folder / "best.pth", unwrap(net))
        barrier(self.info)

    def best_so_far(self) -> float | None:
        """The best val mIoU seen (None before the first validation), as a checkpoint keeps it."""
        return self.best if math.isfinite(self.best) else None
