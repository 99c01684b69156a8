"""The one evaluation loop (docs/method.md#evaluation), shared by eval_cs.py and the training engine's validation."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from dataset.labels import CLASS_SETS, CLASSES
from dataset.transforms import LABEL_SIZES
from model import MAIN, build_from_checkpoint
from utils.errors import CheckpointError, ConfigError
from utils.metrics import ConfusionMatrix, class_set_scores
from utils.runtime import autocast, unwrap

PROTOCOLS: dict[str, tuple[str, ...]] = {
    "cityscapes19": ("cityscapes19",),
    "synthia16": ("synthia16", "synthia13"),
    "synthia13": ("synthia13", "synthia16"),
}
"""Evaluation protocol -> the class sets (dataset.labels.CLASS_SETS) it reports, its main one first.
A net trained on SYNTHIA still predicts 19 classes; the field scores it on SYNTHIA's 16 and on 13."""


def protocol_of_source(source: str | None) -> str:
    """The protocol the field reports for a net trained on `source` (a training dataset name)."""
    return "synthia16" if source == "synthia" else "cityscapes19"


def protocol_scores(confusion: torch.Tensor, protocol: str) -> dict[str, dict]:
    """Scores of each class set `protocol` reports, by set name, main set first: `class_set_scores` plus
    `classes` (their names)."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol: expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return {name: {**class_set_scores(confusion, CLASS_SETS[name]), "classes": [CLASSES[t] for t in CLASS_SETS[name]]}
            for name in PROTOCOLS[protocol]}


def validation_scores(source: str | None, result: dict) -> tuple[float, dict[str, float]]:
    """(the score a run keeps its best checkpoint by, extra values to log) of a validation `result`:
    for a SYNTHIA-trained net the 16-class mIoU, and val/mIoU16, val/mIoU13; the 19-class mIoU otherwise."""
    protocol = protocol_of_source(source)
    if protocol == "cityscapes19":
        return result["mIoU"], {}
    sets = protocol_scores(result["confusion"], protocol)
    extra = {f"val/mIoU{name[len('synthia'):]}": scores["mIoU"] for name, scores in sets.items()}
    return sets[protocol]["mIoU"], extra


def _check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    scales = tuple(float(s) for s in scales)
    if not scales or min(scales) <= 0:
        raise ConfigError(f"--scales: expected one or more positive factors, got {scales}")
    return scales


def _main_logits(net: nn.Module, images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The main head's logits; any other module (e.g. an exported graph) through its `(aux, main)` output."""
    seg_net = unwrap(net)
    if hasattr(seg_net, "main_logits"):
        return seg_net.main_logits(images, size)
    return net(images, output_size=size)[MAIN]


@torch.no_grad()
def predict_scores(net: nn.Module, images: torch.Tensor, output_size: tuple[int, int] | None = None, *,
                   flip: bool = False, scales: Sequence[float] = (1.0,)) -> torch.Tensor:
    """Scores (N, C, H, W) of the main head at `output_size` (default: the images' size).

    With one pass (no flip, one scale) these are the main head's logits (inference needs neither
    the aux head nor a log-softmax over every full-size pixel); with test-time augmentation they
    are the mean of the probabilities over the mirrored and/or rescaled inputs. Arg-max over dim 1
    gives the prediction either way.
    """
    return _scores(net, images, output_size, flip, scales).float()


def _scores(net: nn.Module, images: torch.Tensor, output_size: tuple[int, int] | None, flip: bool,
            scales: Sequence[float]) -> torch.Tensor:
    # `predict_scores` before the cast to float32: one pass keeps the autocast dtype, which the
    # arg-max does not need widened (bf16 -> float32 is exact, so the arg-max is the same).
    scales = _check_scales(scales)
    size = tuple(output_size) if output_size is not None else tuple(images.shape[-2:])
    if len(scales) == 1 and scales[0] == 1.0 and not flip:
        return _main_logits(net, images, size)
    total = None
    passes = 0
    for scale in scales:
        x = images
        if scale != 1.0:
            h, w = images.shape[-2:]
            x = F.interpolate(images, size=(max(1, round(h * scale)), max(1, round(w * scale))),
                              mode="bilinear", align_corners=False)
        variants = [(x, False), (x.flip(-1), True)] if flip else [(x, False)]
        for inp, mirrored in variants:
            prob = _main_logits(net, inp, size).float().softmax(dim=1)
            if mirrored:
                prob = prob.flip(-1)
            total = prob if total is None else total + prob
            passes += 1
    return total / passes


def predict_labels(net: nn.Module, images: torch.Tensor, output_size: tuple[int, int] | None = None, *,
                   flip: bool = False, scales: Sequence[float] = (1.0,)) -> torch.Tensor:
    """Arg-max train ids (N, H, W) of the main head at `output_size` (see `predict_scores`)."""
    with torch.no_grad():
        return class_argmax(_scores(net, images, output_size, flip, scales))


def class_argmax(scores: torch.Tensor) -> torch.Tensor:
    """`scores.argmax(dim=1)`: the first index of the largest score over the classes of (N, C, H, W)."""
    # Same result, ties included, but on the CPU `max(dim=1)` is several times faster than `argmax(dim=1)`
    # over the class dimension of a contiguous NCHW map (15 ms against 53-86 ms at 19x512x1024, measured).
    return scores.max(dim=1).indices


def _labels_of(batch: dict) -> list[torch.Tensor]:
    """The batch's labels as a list of (H, W) tensors (a stacked tensor or a list of differently sized maps)."""
    labels = batch["label"]
    if isinstance(labels, torch.Tensor):
        return list(labels.unbind(0)) if labels.ndim == 3 else [labels]
    return list(labels)


def eval_collate(items: Sequence[dict]) -> dict:
    """DataLoader `collate_fn` that stacks images and keeps labels a list when their sizes differ."""
    batch = {"image": torch.stack([it["image"] for it in items]),
             "name": [it["name"] for it in items]}
    if "label" in items[0]:
        labels = [it["label"] for it in items]
        same = all(lb.shape == labels[0].shape for lb in labels)
        batch["label"] = torch.stack(labels) if same else labels
    return batch


def _segment_batch(net: nn.Module, images: torch.Tensor, labels: list[torch.Tensor], device: torch.device,
                   flip: bool, scales: Sequence[float], amp: str) -> list[torch.Tensor]:
    """Predictions for one batch, each at its label's size (one forward when the sizes agree)."""
    sizes = {tuple(lb.shape[-2:]) for lb in labels}
    with autocast(device, amp):
        if len(sizes) == 1:
            pred = predict_labels(net, images, sizes.pop(), flip=flip, scales=scales)
            return list(pred.unbind(0))
        return [predict_labels(net, images[i:i + 1], tuple(lb.shape[-2:]), flip=flip, scales=scales)[0]
                for i, lb in enumerate(labels)]


def _check_input_labels(images: torch.Tensor, labels: list[torch.Tensor]) -> None:
    """The old protocol scores at the input size: a label of another size means a mis-built loader."""
    for lb in labels:
        if lb.shape[-2:] != images.shape[-2:]:
            raise ConfigError(f"label_size='input' expects labels at the input size {tuple(images.shape[-2:])}, "
                              f"got {tuple(lb.shape[-2:])} (build the dataset with label_size='input')")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(net: nn.Module, loader: Iterable[dict], device: torch.device | str, *, num_classes: int = 19,
             label_size: str = "full", flip: bool = False, scales: Sequence[float] = (1.0,),
             limit: int | None = None, amp: str = "off", channels_last: bool = False,
             on_batch: Callable[[dict, list[torch.Tensor]], None] | None = None,
             progress: bool = True, reduce: bool = False) -> dict:
    """Score `net` (main head) on every labelled batch of `loader`; one confusion matrix on `device`.

    `label_size` names the protocol the loader's labels follow: "full" (labels at the file's
    size; the output is upsampled bilinearly to it, docs/method.md#evaluation) or "input" (the original code's labels,
    nearest-resized to the input size). `on_batch(batch, preds)` sees each batch and its list of
    (H, W) train-id predictions (fewer than the batch when `limit` cuts it). `channels_last` feeds
    the images in that memory format (convert the net too; with bf16 autocast it helps on the CPU). With `reduce`, every
    process of an initialised process group must call this on its own shard: the counts are summed
    over processes (without it, only this process's images count, e.g. validation on rank 0 alone).
    Returns the scores of
    `utils.metrics.scores_from_confusion` plus `confusion`, `num_images`, `seconds`,
    `images_per_s`, `model_seconds` and the `protocol` used.
    """
    if label_size not in LABEL_SIZES:
        raise ConfigError(f"--label-size: expected one of {LABEL_SIZES}, got {label_size!r}")
    scales = _check_scales(scales)
    device = torch.device(device)
    was_training = net.training
    net.eval()
    cm = ConfusionMatrix(num_classes, device)
    num_images, model_seconds, input_size = 0, 0.0, None
    total = len(loader) if hasattr(loader, "__len__") else None
    start = time.perf_counter()
    try:
        with torch.inference_mode(), tqdm(total=total, desc="eval", unit="batch", disable=not progress,
                                          leave=False, dynamic_ncols=True) as bar:
            for batch in loader:
                if limit is not None and num_images >= limit:
                    break
                images = batch["image"]
                labels = _labels_of(batch)
                if limit is not None and num_images + len(labels) > limit:
                    keep = limit - num_images
                    images, labels = images[:keep], labels[:keep]
                images = images.to(device, non_blocking=True)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                labels = [lb.to(device, non_blocking=True) for lb in labels]
                if label_size == "input":
                    _check_input_labels(images, labels)
                input_size = (int(images.shape[-1]), int(images.shape[-2]))
                t0 = time.perf_counter()
                preds = _segment_batch(net, images, labels, device, flip, scales, amp)
                for pred, lb in zip(preds, labels):
                    cm.update(pred, lb)
                _sync(device)
                model_seconds += time.perf_counter() - t0
                num_images += len(preds)
                if on_batch is not None:
                    on_batch(batch, preds)
                bar.update(1)
    finally:
        net.train(was_training)
    seconds = time.perf_counter() - start
    count = torch.tensor(num_images, device=device)
    if reduce and dist.is_available() and dist.is_initialized():
        cm.all_reduce()
        dist.all_reduce(count)
    result = cm.compute()
    result.update({
        "confusion": cm.matrix.cpu(),
        "num_images": int(count),
        "seconds": seconds,
        "images_per_s": num_images / seconds if seconds > 0 else float("nan"),
        "model_seconds": model_seconds,
        "protocol": {"label_size": label_size, "input_size": input_size, "flip": flip,
                     "scales": list(scales), "amp": amp, "channels_last": channels_last,
                     "head": "main"},
    })
    return result


def load_net(restore_from: str, *, arch: str | None = None, allow_pickle: bool = False,
             device: torch.device | str = "cpu", flag: str = "--restore-from") -> nn.Module:
    """A segmentation net in eval mode from any checkpoint form `model.load_weights` accepts.

    Our own checkpoints carry their architecture; others are built as the architecture their keys show
    (or `arch`). A missing local file is a `CheckpointError` naming `flag`.
    """
    if "://" not in restore_from and not Path(restore_from).is_file():
        raise CheckpointError(f"{flag} {restore_from}: no such file")
    net = build_from_checkpoint(restore_from, map_location="cpu", allow_pickle=allow_pickle, arch=arch)
    return net.to(device).eval()
