"""Segmentation scores from one confusion matrix kept on the device (mIoU, pixel and class accuracy)."""
from __future__ import annotations

import torch
import torch.distributed as dist


def scores_from_confusion(matrix: torch.Tensor) -> dict:
    """Scores of a (C, C) confusion matrix whose rows are ground truth and columns predictions.

    Returns `mIoU`, `pixel_acc`, `mean_acc` (floats, NaN when nothing was counted), `iou` and `acc`
    (float64 CPU tensors of length C) and `num_pixels`. A class that is neither in the ground truth
    nor predicted has IoU NaN and does not count in mIoU; a class predicted but absent from the
    ground truth has IoU 0 and counts. Class accuracy is NaN (not counted) for classes absent from
    the ground truth.
    """
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {tuple(matrix.shape)}")
    mat = matrix.detach().to("cpu", torch.float64)
    tp = mat.diagonal()
    gt = mat.sum(dim=1)
    predicted = mat.sum(dim=0)
    union = gt + predicted - tp
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
    total = mat.sum()
    return {
        "mIoU": float(iou.nanmean()),
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        "mean_acc": float(acc.nanmean()),
        "iou": iou,
        "acc": acc,
        "num_pixels": int(total),
    }


class ConfusionMatrix:
    """A (C, C) int64 confusion matrix (rows = ground truth, columns = prediction) on `device`.

    `update` ignores pixels whose target is 255 or any value outside [0, C).
    """

    def __init__(self, num_classes: int = 19, device: torch.device | str = "cpu") -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.device = torch.device(device)
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=self.device)

    @classmethod
    def from_matrix(cls, matrix: torch.Tensor) -> ConfusionMatrix:
        """A confusion matrix holding a copy of the given (C, C) counts."""
        cm = cls(matrix.shape[0], matrix.device)
        cm.matrix.copy_(matrix.to(torch.int64))
        return cm

    def reset(self) -> None:
        """Forget every counted pixel."""
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count the pixels of `pred` (class ids) against `target` (class ids, 255 = ignore); same shape."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        c = self.num_classes
        pred = pred.reshape(-1).to(self.device, torch.int64)
        target = target.reshape(-1).to(self.device, torch.int64)
        keep = (target >= 0) & (target < c) & (pred >= 0) & (pred < c)
        # The ignore label and any stray id go to one extra bin, past the C*C counted ones: no boolean
        # indexing, which would compact the kept pixels (and wait for the device to count them).
        flat = torch.where(keep, target * c + pred, c * c)
        self.matrix += torch.bincount(flat, minlength=c * c + 1)[: c * c].reshape(c, c)

    def all_reduce(self) -> None:
        """Sum the counts of every process when torch.distributed is initialised (a no-op otherwise)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix, op=dist.ReduceOp.SUM)

    def compute(self) -> dict:
        """Scores of the counts so far (see `scores_from_confusion`)."""
        return scores_from_confusion(self.matrix)

    def __repr__(self) -> str:
        scores = self.compute()
        return (f"ConfusionMatrix(num_classes={self.num_classes}, mIoU={scores['mIoU']:.4f}, "
                f"pixel_acc={scores['pixel_acc']:.4f}, pixels={scores['num_pixels']})")


def class_set_scores(matrix: torch.Tensor, classes: tuple[int, ...] | list[int]) -> dict:
    """Scores over the classes `classes` of a (C, C) confusion matrix (rows ground truth, columns predictions).

    Pixels whose ground truth is another class do not count (as if labelled ignore), while a prediction of
    any class counts: this is how a benchmark scored on a subset of the classes is computed (SYNTHIA's 16
    or 13). Returns `mIoU`, `mean_acc`, `pixel_acc` over the subset and `iou`, `acc` (length C, NaN outside
    the subset and where undefined, as in `scores_from_confusion`).
    """
    mat = matrix.detach().to("cpu", torch.float64)
    c = mat.shape[0]
    index = torch.tensor(sorted(set(int(k) for k in classes)), dtype=torch.long)
    if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= c:
        raise ValueError(f"class ids must be in 0..{c - 1}, got {list(classes)}")
    keep = torch.zeros(c, dtype=torch.bool)
    keep[index] = True
    rows = torch.where(keep[:, None], mat, torch.zeros_like(mat))
    tp, gt, predicted = rows.diagonal(), rows.sum(dim=1), rows.sum(dim=0)
    union = gt + predicted - tp
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = torch.where(keep & (union > 0), tp / union.clamp(min=1), nan)
    acc = torch.where(keep & (gt > 0), tp / gt.clamp(min=1), nan)
    total = rows.sum()
    return {
        "mIoU": float(iou.nanmean()),
        "mean_acc": float(acc.nanmean()),
        "pixel_acc": float(tp[index].sum() / total) if total > 0 else float("nan"),
        "iou": iou,
        "acc": acc,
        "num_pixels": int(total),
    }
