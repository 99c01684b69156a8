"""The mIoU an exported graph scores (fp32, int8) on a labelled split, with the project's metrics."""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader, Dataset

from dataset.labels import NUM_CLASSES
from utils.evaluate import eval_collate, evaluate
from utils.onnx_net import OnnxSegNet


def score_graphs(paths: dict[str, Path], data: Dataset, about: dict, threads: int | None = None) -> dict:
    """mIoU and pixel accuracy of each graph (`{"fp32": path, "int8": path}`) on `data`, and the int8
    graph's loss against fp32 in mIoU points; `about` (dataset, split, input size) is kept in the result."""
    scores = dict(about)
    for form, path in paths.items():
        loader = DataLoader(data, batch_size=1, collate_fn=eval_collate)
        net = OnnxSegNet(path, threads, num_classes=NUM_CLASSES)
        result = evaluate(net, loader, "cpu", num_classes=NUM_CLASSES, progress=False)
        scores[form] = {"mIoU": 100 * result["mIoU"], "pixel_acc": 100 * result["pixel_acc"],
                        "num_images": result["num_images"]}
    if "int8" in scores:
        scores["int8_minus_fp32"] = scores["int8"]["mIoU"] - scores["fp32"]["mIoU"]
    return scores
