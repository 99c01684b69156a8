"""The original code's reproductions (benchmark only) compute what the original code computed."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bench.oldway import fast_hist, id_table, old_label_mapping, old_remap
from dataset.layouts import CITYSCAPES_LUT


def test_old_remaps_agree_with_the_lut():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 40, size=(16, 24)).astype(np.uint8)
    expected = CITYSCAPES_LUT[raw]
    train = old_remap(raw, id_table(CITYSCAPES_LUT))
    assert train.dtype == np.float32 and np.array_equal(train, expected.astype(np.float32))
    pairs = [(i, int(t)) for i, t in enumerate(CITYSCAPES_LUT[:34])]
    evaluated = old_label_mapping(raw, pairs)
    # ids 34..39 are not in the old 34-entry table: the original code kept them as they were
    keep = raw < 34
    assert evaluated.dtype == np.int64 and np.array_equal(evaluated[keep], expected[keep])
    assert np.array_equal(evaluated[~keep], raw[~keep])


def test_fast_hist_counts_pairs_and_skips_ignored_labels():
    label = np.array([0, 1, 1, 255, 2])
    pred = np.array([0, 1, 2, 0, 2])
    hist = fast_hist(label, pred, 3)
    assert hist.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]


class _Oracle(torch.nn.Module):
    """A stand-in net that knows each image's label: its scores are the label's one-hot map at the input
    size, smoothed so that both pipelines' upsamplings have work to do. One map per call, in dataset order."""

    def __init__(self, labels: list[torch.Tensor], size: tuple[int, int]) -> None:
        super().__init__()
        w, h = size
        self.maps = []
        for label in labels:
            onehot = F.one_hot(label.clamp(max=18), 19).permute(2, 0, 1)[None].float() * 4
            self.maps.append(F.interpolate(onehot, size=(h, w), mode="bilinear", align_corners=False))
        self.calls = 0

    def _next(self) -> torch.Tensor:
        logits = self.maps[self.calls % len(self.maps)]
        self.calls += 1
        return logits

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # the old net: log-probs
        log_probs = self._next().log_softmax(dim=1)
        return log_probs, log_probs

    def main_logits(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:  # ours
        return F.interpolate(self._next(), size=size, mode="bilinear", align_corners=True)


def test_old_eval_pipeline_scores_what_our_evaluation_scores(synthetic_root):
    from torch.utils.data import DataLoader

    from bench.oldway import old_eval_pipeline
    from dataset import build_dataset
    from utils.evaluate import eval_collate, evaluate

    # input at half the label size: both pipelines upsample (ours the logits, the old one log-probabilities)
    ds = build_dataset("cityscapes", synthetic_root / "cityscapes", "val", size=(32, 16), label_size="full")
    labels = [ds[i]["label"] for i in range(len(ds))]
    ours = evaluate(_Oracle(labels, (32, 16)), DataLoader(ds, batch_size=1, collate_fn=eval_collate),
                    torch.device("cpu"), progress=False)
    old = old_eval_pipeline(_Oracle(labels, (32, 16)), ds, len(ds))
    assert old["num_images"] == len(ds) and old["images_per_s"] > 0
    # the same scores, up to the pixels where the two upsamplings' arg-max differ
    assert ours["mIoU"] > 0.5 and abs(old["mIoU"] - ours["mIoU"]) < 0.02
