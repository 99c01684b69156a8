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
