"""DEFECT REPRODUCTIONS of the original code (docs/differences.md), for benchmark.py's side-by-side timings.

Nothing here is used by training or evaluation: these functions copy the original code's slow or wrong
habits on purpose so that a speed-up can be measured as a ratio within one run.
- teacher in train mode (batch statistics, running statistics drifting)         -> `OldWayStep`
- pseudo labels: arg-max through NumPy and back to the device every step        -> `old_pseudo_label_loss`
- KL with log-probabilities as the target, averaged over every element (NaN now) -> `old_kl`
- label remapping with one pass per id, on float32 copies                        -> `old_remap`
- evaluation: per-image NumPy arg-max, prediction and colour PNGs, then a second pass
  with a 34-entry per-id remap and NumPy `fast_hist` per image                   -> `old_eval_pipeline`
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dataset.decode import read_image
from dataset.labels import PALETTE
from utils.loss import mse_distill, seg_loss
from utils.objective import AUX, MAIN, Knobs, Objective, PhaseSpec, build_objective
from utils.steps import TrainStep


def old_kl(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor) -> torch.Tensor:
    """DEFECT: `kl_div` fed log-probabilities as its target, mean over every element (NaN today)."""
    return F.kl_div(student_log_probs, teacher_log_probs, reduction="mean")


def old_pseudo_label_loss(student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor) -> torch.Tensor:
    """DEFECT: the teacher's arg-max taken in NumPy on the host and sent back to the device."""
    labels = np.argmax(teacher_log_probs.detach().cpu().numpy(), axis=1)
    return seg_loss(student_log_probs, torch.from_numpy(labels).to(student_log_probs.device))


# DEFECT: the original code's distillation terms, as forms of the objective's terms
OLD_WAY_FORMS = {
    "kl_main": lambda x: old_kl(x.student[MAIN], x.teacher[MAIN]),
    "kl_aux": lambda x: old_kl(x.student[AUX], x.teacher[AUX]),
    "mse": lambda x: mse_distill(x.student[AUX], x.teacher[AUX]),
    "pseudo": lambda x: old_pseudo_label_loss(x.student[MAIN], x.teacher[MAIN]),
}


def old_way_objective(spec: PhaseSpec, knobs: Knobs) -> Objective:
    """The objective of `spec` with the original code's distillation terms."""
    return build_objective(spec, knobs, forms=OLD_WAY_FORMS)


class OldWayStep(TrainStep):
    """DEFECT: TrainStep with the original code's teacher (train mode); benchmark only."""

    @torch.no_grad()
    def _teacher(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.teacher.train()  # the original code never switched the teacher to eval mode
        return self._forward(self.teacher, images)


def old_remap(raw: np.ndarray, id_to_train: dict[int, int]) -> np.ndarray:
    """DEFECT: the old training loaders' remap: float32 copies, one full pass over the map per id."""
    label = np.asarray(raw, np.float32)
    out = 255 * np.ones(label.shape, dtype=np.float32)
    for label_id, train_id in id_to_train.items():
        out[label == label_id] = train_id
    return out


def old_label_mapping(raw: np.ndarray, pairs: list[tuple[int, int]]) -> np.ndarray:
    """DEFECT: the old evaluation's remap: one pass per entry of the 34-entry id table, int64 result."""
    out = np.copy(raw)
    for label_id, train_id in pairs:
        out[raw == label_id] = train_id
    return np.array(out, dtype=np.int64)


def id_table(lut: np.ndarray) -> dict[int, int]:
    """The original code's `{label id: train id}` dict for a 256-entry LUT (ids that are not ignored)."""
    return {i: int(t) for i, t in enumerate(lut) if t != 255}


def fast_hist(label: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """The original code's per-image NumPy confusion matrix (rows ground truth)."""
    keep = (label >= 0) & (label < n)
    return np.bincount(n * label[keep].astype(int) + pred[keep], minlength=n * n).reshape(n, n)


@torch.no_grad()
def old_eval_pipeline(net: torch.nn.Module, dataset, num_images: int, num_classes: int = 19) -> dict:
    """DEFECT: the old two-script evaluation (AdaptSegNet's, which the original code borrowed), scored at the
    labels' full size: per image the original net's forward (both heads upsampled to the input size and
    log-softmaxed there), the main output upsampled to the label's size, a NumPy transpose and arg-max, a
    prediction PNG and a colour PNG; then a second pass reading predictions and raw labels back, the
    per-id remap of the 34 label ids and `fast_hist`.

    Returns {"mIoU", "num_images", "seconds", "images_per_s"}.
    """
    net.eval()
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")  # the loader gives CPU images
    palette = [c for rgb in PALETTE for c in rgb]
    pairs = [(i, int(t)) for i, t in enumerate(dataset.layout.lut[:34])]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        names = []
        for i in range(num_images):
            image, _ = dataset.transform(read_image(dataset.image_path(i)))  # the same decoding and resize as ours
            label_path = dataset.label_path(i)
            with Image.open(label_path) as header:  # the size only: the label is read in the second pass
                w, h = header.size
            main = net(image.unsqueeze(0).to(device))[1]
            main = F.interpolate(main, size=(h, w), mode="bilinear", align_corners=True)
            scores = main.cpu().numpy()[0].transpose(1, 2, 0)
            pred = np.asarray(np.argmax(scores, axis=2), dtype=np.uint8)
            colour = Image.fromarray(pred).convert("P")
            colour.putpalette(palette)
            out = Path(tmp) / f"{i}.png"
            Image.fromarray(pred).save(out)
            colour.save(Path(tmp) / f"{i}_color.png")
            names.append((out, label_path))
        hist = np.zeros((num_classes, num_classes))
        for pred_path, label_path in names:
            pred = np.array(Image.open(pred_path))
            label = old_label_mapping(np.array(Image.open(label_path)), pairs)
            hist += fast_hist(label.flatten(), pred.flatten(), num_classes)
    seconds = time.perf_counter() - start
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
    return {"mIoU": float(np.nanmean(iou)), "num_images": num_images, "seconds": seconds,
            "images_per_s": num_images / seconds}
