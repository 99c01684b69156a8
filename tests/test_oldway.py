"""The old code's reproductions (benchmark only) compute what the old code computed."""
from __future__ import annotations

import numpy as np

from dataset.layouts import CITYSCAPES_LUT
from utils.oldway import fast_hist, id_table, old_label_mapping, old_remap


def test_old_remaps_agree_with_the_lut():
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 40, size=(16, 24)).astype(np.uint8)
    expected = CITYSCAPES_LUT[raw]
    train = old_remap(raw, id_table(CITYSCAPES_LUT))
    assert train.dtype == np.float32 and np.array_equal(train, expected.astype(np.float32))
    pairs = [(i, int(t)) for i, t in enumerate(CITYSCAPES_LUT[:34])]
    evaluated = old_label_mapping(raw, pairs)
    # ids 34..39 are not in the old 34-entry table: the old code kept them as they were
    keep = raw < 34
    assert evaluated.dtype == np.int64 and np.array_equal(evaluated[keep], expected[keep])
    assert np.array_equal(evaluated[~keep], raw[~keep])


def test_fast_hist_counts_pairs_and_skips_ignored_labels():
    label = np.array([0, 1, 1, 255, 2])
    pred = np.array([0, 1, 2, 0, 2])
    hist = fast_hist(label, pred, 3)
    assert hist.tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]


def test_old_eval_pipeline_scores_what_our_evaluation_scores(synthetic_root):
    import torch
    from torch.utils.data import DataLoader

    from dataset import build_dataset
    from model import build_seg_model
    from utils.evaluate import eval_collate, evaluate
    from utils.oldway import old_eval_pipeline

    torch.manual_seed(0)
    net = build_seg_model("drn_d_22").eval()
    with torch.no_grad():  # a head biased towards a few classes, so that the predictions are varied
        net.seg1.bias.copy_(torch.linspace(-2, 2, 19))
    ds = build_dataset("cityscapes", synthetic_root / "cityscapes", "val", size=(64, 32), label_size="full")
    ours = evaluate(net, DataLoader(ds, batch_size=1, collate_fn=eval_collate), torch.device("cpu"), progress=False)
    old = old_eval_pipeline(net, ds, len(ds))
    assert old["num_images"] == len(ds) and old["images_per_s"] > 0
    assert abs(old["mIoU"] - ours["mIoU"]) < 1e-9 and 0 < ours["mIoU"] < 1
