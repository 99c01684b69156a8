"""ConfusionMatrix and the scores it gives, checked on hand-built matrices and pixels."""
from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist

from utils.metrics import ConfusionMatrix, scores_from_confusion


def test_scores_on_hand_built_matrix():
    # rows = ground truth, columns = prediction; class 2 is never present and never predicted.
    mat = torch.tensor([[3, 1, 0], [0, 2, 0], [0, 0, 0]])
    s = scores_from_confusion(mat)
    assert s["iou"][0].item() == pytest.approx(3 / 4)
    assert s["iou"][1].item() == pytest.approx(2 / 3)
    assert math.isnan(s["iou"][2].item())
    assert s["mIoU"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert s["pixel_acc"] == pytest.approx(5 / 6)
    assert s["acc"][0].item() == pytest.approx(3 / 4)
    assert s["acc"][1].item() == pytest.approx(1.0)
    assert s["mean_acc"] == pytest.approx((3 / 4 + 1.0) / 2)
    assert s["num_pixels"] == 6


def test_class_never_present_nor_predicted_does_not_count():
    small = scores_from_confusion(torch.tensor([[4, 1], [2, 3]]))
    padded = torch.zeros(5, 5, dtype=torch.int64)
    padded[:2, :2] = torch.tensor([[4, 1], [2, 3]])
    big = scores_from_confusion(padded)
    assert big["mIoU"] == pytest.approx(small["mIoU"])
    assert big["mean_acc"] == pytest.approx(small["mean_acc"])
    assert big["pixel_acc"] == pytest.approx(small["pixel_acc"])
    assert torch.isnan(big["iou"][2:]).all()


def test_class_predicted_but_absent_counts_with_iou_zero():
    s = scores_from_confusion(torch.tensor([[2, 1], [0, 0]]))
    assert s["iou"][1].item() == 0.0
    assert s["mIoU"] == pytest.approx((2 / 3 + 0.0) / 2)
    # mean class accuracy only averages classes that occur in the ground truth
    assert math.isnan(s["acc"][1].item())
    assert s["mean_acc"] == pytest.approx(2 / 3)


def test_empty_matrix_gives_nan_not_an_error():
    s = ConfusionMatrix(4).compute()
    assert math.isnan(s["mIoU"]) and math.isnan(s["pixel_acc"]) and math.isnan(s["mean_acc"])
    assert s["num_pixels"] == 0


def test_perfect_prediction_scores_one():
    cm = ConfusionMatrix(3)
    t = torch.tensor([[0, 1, 2], [2, 1, 0]])
    cm.update(t, t)
    s = cm.compute()
    assert s["mIoU"] == 1.0 and s["pixel_acc"] == 1.0 and s["mean_acc"] == 1.0


def test_update_counts_pixels_as_rows_ground_truth_columns_prediction():
    cm = ConfusionMatrix(3)
    target = torch.tensor([0, 0, 1, 2])
    pred = torch.tensor([0, 1, 1, 0])
    cm.update(pred, target)
    expected = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 0]])
    assert torch.equal(cm.matrix, expected)


def test_ignored_pixel_changes_nothing():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (2, 16, 16), generator=g)
    pred = torch.randint(0, 5, (2, 16, 16), generator=g)
    a = ConfusionMatrix(5)
    a.update(pred, target)
    target_ignored = target.clone()
    target_ignored[0, 3, 4] = 255
    target_ignored[1, 0, 0] = 255
    pred_changed = pred.clone()
    pred_changed[0, 3, 4] = (pred[0, 3, 4] + 1) % 5
    b = ConfusionMatrix(5)
    b.update(pred_changed, target_ignored)
    c = ConfusionMatrix(5)
    keep = torch.ones_like(target, dtype=torch.bool)
    keep[0, 3, 4] = keep[1, 0, 0] = False
    c.update(pred[keep], target[keep])
    assert torch.equal(b.matrix, c.matrix)
    assert b.matrix.sum() == a.matrix.sum() - 2


def test_targets_outside_the_class_range_are_ignored():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 2, 0]), torch.tensor([0, 7, 255, 3]))
    assert cm.matrix.sum().item() == 1 and cm.matrix[0, 0].item() == 1


def test_matches_a_brute_force_count():
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 19, (3, 20, 30), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.1] = 255
    pred = torch.randint(0, 19, (3, 20, 30), generator=g)
    cm = ConfusionMatrix(19)
    cm.update(pred, target)
    brute = torch.zeros(19, 19, dtype=torch.int64)
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist()):
        if t != 255:
            brute[t, p] += 1
    assert torch.equal(cm.matrix, brute)
    s = cm.compute()
    ious = [brute[k, k] / (brute[k].sum() + brute[:, k].sum() - brute[k, k]) for k in range(19)]
    assert s["mIoU"] == pytest.approx(float(torch.stack(ious).double().mean()))


def test_updates_accumulate_and_reset_clears():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    cm.update(torch.tensor([1]), torch.tensor([0]))
    assert cm.matrix.tolist() == [[1, 1], [0, 1]]
    cm.reset()
    assert cm.matrix.sum().item() == 0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        ConfusionMatrix(2).update(torch.zeros(2, 3), torch.zeros(3, 2))


def test_from_matrix_round_trips():
    mat = torch.tensor([[5, 0], [1, 2]])
    assert torch.equal(ConfusionMatrix.from_matrix(mat).matrix, mat)


def test_all_reduce_is_a_no_op_without_a_process_group():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
    before = cm.matrix.clone()
    cm.all_reduce()
    assert torch.equal(cm.matrix, before)


def _counts_on_rank(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:  # rank 0 sees two pixels, rank 1 three others
        cm = ConfusionMatrix(2)
        if rank == 0:
            cm.update(torch.tensor([0, 1]), torch.tensor([0, 0]))
        else:
            cm.update(torch.tensor([1, 1, 0]), torch.tensor([1, 1, 1]))
        cm.all_reduce()
        torch.save(cm.matrix, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build")
def test_all_reduce_sums_the_counts_of_every_process(tmp_path):
    import torch.multiprocessing as mp

    # forked ranks start in milliseconds; a file store needs no port
    mp.start_processes(_counts_on_rank, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2,
                       start_method="fork")
    for rank in (0, 1):
        assert torch.load(tmp_path / f"rank{rank}.pt", weights_only=True).tolist() == [[1, 1], [1, 2]]
