"""Label tables: Cityscapes ids -> train ids, BDD train ids, palette, inverse table."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dataset.labels import (
    BDD_LUT,
    CITYSCAPES_LUT,
    CLASSES,
    IGNORE_LABEL,
    NUM_CLASSES,
    PALETTE,
    TRAIN_ID_TO_LABEL_ID,
    colorize,
)

# docs/method.md#data, written out by hand: Cityscapes label id -> (train id, class name)
ID_TABLE = {
    7: (0, "road"), 8: (1, "sidewalk"), 11: (2, "building"), 12: (3, "wall"), 13: (4, "fence"),
    17: (5, "pole"), 19: (6, "traffic light"), 20: (7, "traffic sign"), 21: (8, "vegetation"),
    22: (9, "terrain"), 23: (10, "sky"), 24: (11, "person"), 25: (12, "rider"), 26: (13, "car"),
    27: (14, "truck"), 28: (15, "bus"), 31: (16, "train"), 32: (17, "motorcycle"), 33: (18, "bicycle"),
}


def test_every_cityscapes_label_id_maps_to_the_spec_train_id():
    assert CITYSCAPES_LUT.dtype == np.uint8 and CITYSCAPES_LUT.shape == (256,)
    for value in range(256):
        expected = ID_TABLE[value][0] if value in ID_TABLE else IGNORE_LABEL
        assert CITYSCAPES_LUT[value] == expected, f"label id {value}"


def test_class_names_follow_train_id_order():
    assert NUM_CLASSES == len(CLASSES) == len(PALETTE) == 19
    for train_id, name in ID_TABLE.values():
        assert CLASSES[train_id] == name


def test_train_id_to_label_id_inverts_the_lut():
    for train_id in range(NUM_CLASSES):
        assert CITYSCAPES_LUT[TRAIN_ID_TO_LABEL_ID[train_id]] == train_id
    assert TRAIN_ID_TO_LABEL_ID[IGNORE_LABEL] == 0


def test_bdd_lut_keeps_train_ids_and_ignores_invalid_values():
    assert list(BDD_LUT[:NUM_CLASSES]) == list(range(NUM_CLASSES))
    assert (BDD_LUT[NUM_CLASSES:] == IGNORE_LABEL).all()


def test_colorize_uses_the_palette_and_blacks_out_ignored():
    ids = np.array([[0, 13], [255, 18]], np.uint8)
    rgb = colorize(ids)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == PALETTE[0] and tuple(rgb[0, 1]) == PALETTE[13]
    assert tuple(rgb[1, 0]) == (0, 0, 0) and tuple(rgb[1, 1]) == PALETTE[18]


@pytest.mark.parametrize("shape", [(512, 1024), (7, 9), (1, 1), (0, 4), (3, 6)])
def test_label_lut_equals_a_plain_lookup_for_every_id_and_shape(shape):
    from dataset.lut import LabelLUT

    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=shape).astype(np.uint8)
    out = LabelLUT(CITYSCAPES_LUT)(torch.from_numpy(raw))
    assert out.dtype == torch.uint8 and out.shape == shape
    assert np.array_equal(out.numpy(), CITYSCAPES_LUT[raw])


def test_label_lut_accepts_a_strided_view_and_tables_that_differ():
    from dataset.lut import LabelLUT

    raw = torch.arange(256, dtype=torch.uint8).repeat(4, 1)[:, ::3]
    for table in (np.arange(256, dtype=np.uint8)[::-1].copy(), np.full(256, 7, np.uint8)):
        out = LabelLUT(torch.from_numpy(table))(raw)
        assert np.array_equal(out.numpy(), table[raw.numpy()])


@pytest.mark.parametrize("shape", [(64, 128), (7, 9), (1, 1)])
def test_label_lut_in_place_writes_the_lookup_into_the_raw_map(shape):
    from dataset.lut import LabelLUT

    raw = torch.from_numpy(np.random.default_rng(1).integers(0, 256, size=shape).astype(np.uint8))
    expected = CITYSCAPES_LUT[raw.numpy()]
    out = LabelLUT(CITYSCAPES_LUT)(raw, inplace=True)
    assert np.array_equal(out.numpy(), expected)
    assert out.data_ptr() == raw.data_ptr() and np.array_equal(raw.numpy(), expected)


def test_label_lut_leaves_its_input_alone_unless_asked_and_contiguous():
    from dataset.lut import LabelLUT

    lut = LabelLUT(CITYSCAPES_LUT)
    raw = torch.arange(256, dtype=torch.uint8).repeat(3, 1)
    before = raw.clone()
    lut(raw)
    strided = raw[:, ::2]
    out = lut(strided, inplace=True)  # not contiguous: a new map
    assert torch.equal(raw, before)
    assert np.array_equal(out.numpy(), CITYSCAPES_LUT[strided.numpy()])


def test_label_lut_keeps_its_own_copy_of_the_table():
    from dataset.lut import LabelLUT

    table = CITYSCAPES_LUT.copy()
    lut = LabelLUT(table)
    table[7] = 99
    assert lut(torch.tensor([[7, 8]], dtype=torch.uint8)).tolist() == [[0, 1]]


@pytest.mark.parametrize("table, message", [
    (np.zeros(255, np.uint8), "256 values"), (np.full(256, 300), "256 values"), (np.full(256, -1), "256 values"),
    (np.zeros(256, np.float32), "256 values"),
])
def test_label_lut_refuses_a_table_that_is_not_256_bytes(table, message):
    from dataset.lut import LabelLUT

    with pytest.raises(ValueError, match=message):
        LabelLUT(table)


def test_label_lut_refuses_labels_that_are_not_uint8():
    from dataset.lut import LabelLUT

    with pytest.raises(TypeError, match="uint8, got torch.int64"):
        LabelLUT(CITYSCAPES_LUT)(torch.zeros(2, 2, dtype=torch.long))


@pytest.mark.parametrize("max_id", [33, 18])
def test_undefined_ids_are_the_values_outside_the_table_and_ignore(max_id):
    from dataset.lut import undefined_ids

    defined = torch.tensor([*range(max_id + 1), 255], dtype=torch.uint8)
    assert undefined_ids(defined.reshape(1, -1), max_id) == []
    assert undefined_ids(torch.zeros(0, 4, dtype=torch.uint8), max_id) == []
    for value in range(max_id + 1, 255):
        label = torch.full((3, 5), 7, dtype=torch.uint8)
        label[2, 4] = value
        assert undefined_ids(label, max_id) == [value]
    many = torch.tensor([[254, 200, 40, 40, 100, 60, 34, 255, 7]], dtype=torch.uint8)
    assert undefined_ids(many, 33) == [34, 40, 60, 100, 200]  # the first five, sorted
