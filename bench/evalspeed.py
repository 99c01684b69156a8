"""Throughput of eval_cs.py's pipeline: its dataset, loader and `utils.evaluate.evaluate` call, in this process.

eval_cs.py builds the Cityscapes val dataset at the input size with labels at their full size, a DataLoader
(batch 1, 2 workers by default, pinned memory on a GPU) and calls `evaluate`; this does the same on
synthetic Cityscapes frames, after a warm-up pass over the first images. Two figures per variant: images/s
end to end (decoding and resizing included, as eval_cs.py prints) and images/s of the model's part alone
(forward, upsampling to the label's size, arg-max, confusion matrix: evaluate's `model_seconds`).
"""
from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from dataset import build_dataset
from dataset.synthetic import write_domain
from model import build_seg_model, fold_batchnorm
from utils.evaluate import eval_collate, evaluate

ARCH = "drn_d_22"            # the student: what a user evaluates
DISTINCT_FRAMES = 2          # rendered frames; the others are copies of them (the speed does not depend on content)
WARMUP_IMAGES = 2


@dataclass(frozen=True)
class EvalVariant:
    """eval_cs.py's flags for one measurement."""

    amp: str = "off"
    channels_last: bool = False
    fold_bn: bool = False
    workers: int = 2

    @property
    def flags(self) -> str:
        """The eval_cs.py flags of this variant."""
        flags = ([f"--amp {self.amp}"] if self.amp != "off" else []) + (["--channels-last"] if self.channels_last
                                                                        else []) + (["--fold-bn"] if self.fold_bn
                                                                                    else [])
        return " ".join(flags + [f"--num-workers {self.workers}"])


def make_val_frames(folder: Path, count: int, label_size: tuple[int, int], seed: int = 0) -> Path:
    """A Cityscapes-layout root with `count` val frames of `label_size` (W, H); returns the root."""
    root = folder / "cityscapes"
    write_domain(root, "cityscapes", "val", min(count, DISTINCT_FRAMES), label_size, seed)
    images = sorted((root / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))
    for i in range(len(images), count):
        src = images[i % len(images)]
        stem = f"{src.parent.name}_{900000 + i:06d}_000019"
        label = root / "gtFine" / "val" / src.parent.name / src.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
        shutil.copyfile(src, src.parent / f"{stem}_leftImg8bit.png")
        shutil.copyfile(label, label.parent / f"{stem}_gtFine_labelIds.png")
    return root


def eval_throughput(root: Path, device: torch.device, input_size: tuple[int, int], variant: EvalVariant,
                    net: torch.nn.Module) -> dict:
    """eval_cs.py's pipeline on every frame under `root` with `variant`'s flags, after a warm-up pass."""
    dataset = build_dataset("cityscapes", root, "val", size=input_size, labels=True, label_size="full")
    model = fold_batchnorm(net) if variant.fold_bn else copy.deepcopy(net)
    model = model.to(device).eval()
    if variant.channels_last:
        model = model.to(memory_format=torch.channels_last)

    def run(items) -> dict:
        loader = DataLoader(items, batch_size=1, shuffle=False, num_workers=variant.workers,
                            collate_fn=eval_collate, pin_memory=device.type == "cuda")
        return evaluate(model, loader, device, amp=variant.amp, channels_last=variant.channels_last,
                        progress=False)

    run(Subset(dataset, range(min(WARMUP_IMAGES, len(dataset)))))
    result = run(dataset)
    images, model_s = result["num_images"], result["model_seconds"]
    return {"images": images, "seconds": result["seconds"], "model_seconds": model_s,
            "images_per_s": result["images_per_s"], "model_images_per_s": images / model_s, "mIoU": result["mIoU"]}


def student(seed: int = 0) -> torch.nn.Module:
    """The evaluated net: a student with random weights (speed does not depend on them)."""
    torch.manual_seed(seed)
    return build_seg_model(ARCH).eval()
