"""DEFECT REPRODUCTIONS of the old code (SPEC section 8), for benchmark.py's side-by-side timings only.

Nothing here is used by training or evaluation: these functions copy the old code's slow or wrong
habits on purpose so that a speed-up can be measured as a ratio within one run.
- teacher in train mode (batch statistics, running statistics drifting)         -> `OldWayStep`
- pseudo labels: arg-max through NumPy and back to the device every step        -> `old_pseudo_label_loss`
- KL with log-probabilities as the target, averaged over every element (NaN now) -> `old_kl`
- label remapping with one pass per id                                          -> `old_remap`
- evaluation: per-image NumPy arg-max, prediction PNGs, then a second pass with
  NumPy `fast_hist` per image                                                   -> `old_eval_pipeline`
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from utils.loss import mse_distill, seg_loss
from utils.steps import LossWeights, TrainStep


def old_kl(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor) -> torch.Tensor:
    """DEFECT: `kl_div` fed log-probabilities as its target, mean over every element (NaN today)."""
    return F.kl_div(student_log_probs, teacher_log_probs, reduction="mean")


def old_pseudo_label_loss(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor) -> torch.Tensor:
    """DEFECT: the teacher's arg-max taken in NumPy on the host and sent back to the device."""
    labels = np.argmax(teacher_log_probs.detach().cpu().numpy(), axis=1)
    return seg_loss(student_log_probs, torch.from_numpy(labels).to(student_log_probs.device))


class OldWayStep(TrainStep):
    """DEFECT: TrainStep with the old code's teacher (train mode) and distillation terms; benchmark only."""

    @torch.no_grad()
    def _teacher(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.teacher.train()  # the old code never switched the teacher to eval mode
        return self._forward(self.teacher, images)

    def _distillation_terms(self, student, teacher, w: LossWeights) -> dict[str, torch.Tensor]:
        (s_aux, s_main), (t_aux, t_main) = student, teacher
        return {
            "kl": old_kl(s_main, t_main) + w.lambda_seg * old_kl(s_aux, t_aux),
            "mse": mse_distill(s_aux, t_aux),
            "pseudo": old_pseudo_label_loss(s_main, t_main),
        }


def old_remap(raw: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """DEFECT: label ids mapped to train ids with one full pass over the map per id."""
    out = np.full(raw.shape, 255, np.uint8)
    for value, train_id in enumerate(lut):
        if train_id != 255:
            out[raw == value] = train_id
    return out


def fast_hist(label: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """The old code's per-image NumPy confusion matrix (rows ground truth)."""
    keep = (label >= 0) & (label < n)
    return np.bincount(n * label[keep].astype(int) + pred[keep], minlength=n * n).reshape(n, n)


@torch.no_grad()
def old_eval_pipeline(net: torch.nn.Module, dataset, num_images: int, num_classes: int = 19) -> dict:
    """DEFECT: the old two-script evaluation: per image a forward, NumPy arg-max, a prediction PNG;
    then a second pass reading predictions and raw labels back, per-id remap and `fast_hist`.

    Returns {"mIoU", "num_images", "seconds", "images_per_s"}.
    """
    net.eval()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        names = []
        for i in range(num_images):
            item = dataset[i]  # the same decoding and resizing as ours; its LUT label is discarded
            label_path = dataset.label_path(i)
            h, w = np.asarray(Image.open(label_path)).shape
            main = net(item["image"].unsqueeze(0), output_size=(h, w))[1]  # the same forward as ours
            pred = np.asarray(np.argmax(main[0].cpu().numpy(), axis=0), dtype=np.uint8)
            out = Path(tmp) / f"{i}.png"
            Image.fromarray(pred).save(out)
            names.append((out, label_path))
        hist = np.zeros((num_classes, num_classes))
        lut = dataset.layout.lut
        for pred_path, label_path in names:
            pred = np.asarray(Image.open(pred_path)).astype(np.int64)
            label = old_remap(np.asarray(Image.open(label_path)), lut).astype(np.int64)
            label[label == 255] = -1
            hist += fast_hist(label.flatten(), pred.flatten(), num_classes)
    seconds = time.perf_counter() - start
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
    return {"mIoU": float(np.nanmean(iou)), "num_images": num_images, "seconds": seconds,
            "images_per_s": num_images / seconds}
