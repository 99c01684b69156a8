"""evaluate(): the one evaluation loop, checked with stand-in nets whose predictions are known."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import ConfigError
from utils.evaluate import class_argmax, eval_collate, evaluate, predict_labels, predict_scores


class ConstantNet(nn.Module):
    """Predicts class `k` everywhere (log-probabilities), at `output_size` or the input size."""

    def __init__(self, k: int, num_classes: int = 19) -> None:
        super().__init__()
        self.k, self.num_classes = k, num_classes
        self.calls: list[tuple] = []

    def forward(self, x, output_size=None):
        self.calls.append((tuple(x.shape), output_size))
        h, w = output_size if output_size is not None else x.shape[-2:]
        logits = torch.zeros(x.shape[0], self.num_classes, h, w)
        logits[:, self.k] = 5.0
        log_probs = F.log_softmax(logits, dim=1)
        return log_probs, log_probs


class LeftRightNet(nn.Module):
    """Class 1 where the input's first channel is positive, else class 0 (upsampled to output_size)."""

    def forward(self, x, output_size=None):
        size = output_size if output_size is not None else x.shape[-2:]
        logits = torch.cat([-x[:, :1], x[:, :1]], dim=1) * 10
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=True)
        out = F.log_softmax(logits, dim=1)
        return out, out


def batches(labels: list[torch.Tensor], image_size=(8, 16)) -> list[dict]:
    h, w = image_size
    return [{"image": torch.zeros(1, 3, h, w), "label": lb[None], "name": [f"img{i}.png"]}
            for i, lb in enumerate(labels)]


def test_constant_prediction_gives_the_hand_counted_scores():
    label = torch.zeros(16, 32, dtype=torch.int64)
    label[:4] = 2
    label[4:8] = 255
    result = evaluate(ConstantNet(0), batches([label]), "cpu", progress=False)
    # 256 pixels of class 0 (all right), 128 of class 2 (all called 0), 128 ignored
    assert result["pixel_acc"] == pytest.approx(256 / 384)
    assert result["iou"][0].item() == pytest.approx(256 / 384)
    assert result["iou"][2].item() == 0.0
    assert result["mIoU"] == pytest.approx((256 / 384 + 0.0) / 2)
    assert result["mean_acc"] == pytest.approx((1.0 + 0.0) / 2)
    assert result["num_images"] == 1 and result["images_per_s"] > 0
    assert result["confusion"].sum().item() == 384


def test_output_is_upsampled_to_the_full_label_size():
    net = ConstantNet(0)
    label = torch.zeros(16, 32, dtype=torch.int64)
    evaluate(net, batches([label], image_size=(8, 16)), "cpu", progress=False)
    assert net.calls == [((1, 3, 8, 16), (16, 32))]


def test_ignored_pixels_change_nothing():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 8, 8, generator=g)
    label = (x[0, 0] > 0).long()
    flipped = label.clone()
    flipped[0, :4] = 255
    base = evaluate(LeftRightNet(), [{"image": x, "label": label[None]}], "cpu", progress=False)
    ign = evaluate(LeftRightNet(), [{"image": x, "label": flipped[None]}], "cpu", progress=False)
    assert base["mIoU"] == 1.0 and ign["mIoU"] == 1.0
    assert ign["num_pixels"] == base["num_pixels"] - 4


def test_input_protocol_refuses_full_size_labels():
    label = torch.zeros(16, 32, dtype=torch.int64)
    with pytest.raises(ConfigError, match="label_size='input'"):
        evaluate(ConstantNet(0), batches([label]), "cpu", label_size="input", progress=False)
    small = torch.zeros(8, 16, dtype=torch.int64)
    out = evaluate(ConstantNet(0), batches([small]), "cpu", label_size="input", progress=False)
    assert out["mIoU"] == 1.0 and out["protocol"]["label_size"] == "input"


def test_unknown_label_size_is_a_config_error():
    with pytest.raises(ConfigError, match="label-size"):
        evaluate(ConstantNet(0), [], "cpu", label_size="half", progress=False)


def test_limit_cuts_inside_a_batch_and_on_batch_sees_each_prediction():
    labels = torch.zeros(3, 16, 32, dtype=torch.int64)
    loader = [{"image": torch.zeros(3, 3, 8, 16), "label": labels, "name": ["a", "b", "c"]}] * 2
    seen = []
    out = evaluate(ConstantNet(1), loader, "cpu", limit=4, progress=False,
                   on_batch=lambda batch, preds: seen.append([tuple(p.shape) for p in preds]))
    assert out["num_images"] == 4
    assert seen == [[(16, 32)] * 3, [(16, 32)]]


def test_labels_of_different_sizes_in_one_batch():
    items = [{"image": torch.zeros(3, 8, 16), "label": torch.zeros(16, 32, dtype=torch.int64), "name": "a"},
             {"image": torch.zeros(3, 8, 16), "label": torch.ones(20, 40, dtype=torch.int64), "name": "b"}]
    batch = eval_collate(items)
    assert isinstance(batch["label"], list) and batch["image"].shape == (2, 3, 8, 16)
    out = evaluate(ConstantNet(0), [batch], "cpu", progress=False)
    assert out["num_pixels"] == 16 * 32 + 20 * 40
    assert out["pixel_acc"] == pytest.approx(16 * 32 / (16 * 32 + 20 * 40))


def test_flip_and_scales_keep_a_mirror_symmetric_answer():
    x = torch.randn(2, 3, 16, 16)
    x = x + x.flip(-1)  # mirror-symmetric input: flip TTA must not change the prediction
    net = LeftRightNet()
    plain = predict_labels(net, x)
    assert torch.equal(predict_labels(net, x, flip=True), plain)
    scores = predict_scores(net, x, (32, 32), flip=True, scales=(0.5, 1.0, 1.5))
    assert scores.shape == (2, 2, 32, 32)
    assert torch.allclose(scores.sum(1), torch.ones(2, 32, 32), atol=1e-5)  # averaged probabilities


def test_bad_scales_are_rejected():
    with pytest.raises(ConfigError, match="scales"):
        predict_scores(LeftRightNet(), torch.zeros(1, 3, 8, 8), scales=(0.0,))


def test_train_mode_is_restored_and_bf16_autocast_runs_on_cpu():
    net = ConstantNet(0).train()
    label = torch.zeros(16, 32, dtype=torch.int64)
    out = evaluate(net, batches([label]), "cpu", amp="bf16", progress=False)
    assert net.training and out["mIoU"] == 1.0 and out["protocol"]["amp"] == "bf16"


def test_a_real_segnet_is_scored_on_its_eval_mode_flip_predictions():
    from model import build_seg_model

    torch.manual_seed(0)
    net = build_seg_model("drn_d_22")  # in train mode: evaluate must switch to eval and back
    image, label = torch.randn(2, 3, 12, 20), torch.randint(0, 19, (2, 24, 40))
    label[0, :3] = 255
    out = evaluate(net, [{"image": image, "label": label}], "cpu", flip=True, progress=False)
    assert net.training
    with torch.no_grad():
        pred = predict_labels(net.eval(), image, (24, 40), flip=True)
    keep = label != 255
    counted = torch.bincount(label[keep] * 19 + pred[keep], minlength=19 * 19).reshape(19, 19)
    assert torch.equal(out["confusion"], counted)
    assert out["num_pixels"] == 2 * 24 * 40 - 3 * 40
    assert out["pixel_acc"] == pytest.approx((pred[keep] == label[keep]).double().mean().item())


def test_class_argmax_equals_argmax_with_ties_picking_the_first_class():
    torch.manual_seed(0)
    scores = torch.randint(0, 3, (2, 19, 7, 9)).float()  # many exact ties
    assert torch.equal(class_argmax(scores), scores.argmax(dim=1))
    scores = torch.randn(1, 19, 33, 65)
    assert torch.equal(class_argmax(scores), scores.argmax(dim=1))


def test_channels_last_gives_the_same_confusion_and_is_recorded():
    from model import build_seg_model

    torch.manual_seed(0)
    net = build_seg_model("drn_d_22").eval()
    batch = {"image": torch.randn(2, 3, 16, 24), "label": torch.randint(0, 19, (2, 32, 48))}
    plain = evaluate(net, [batch], "cpu", progress=False)
    fast = evaluate(net.to(memory_format=torch.channels_last), [batch], "cpu", channels_last=True, progress=False)
    assert fast["protocol"]["channels_last"] and not plain["protocol"]["channels_last"]
    # the same arithmetic in another memory order: at most a near-tie pixel may flip
    assert (fast["confusion"] - plain["confusion"]).abs().sum() <= 2


def test_bf16_predictions_are_the_arg_max_of_the_widened_scores():
    from model import build_seg_model

    torch.manual_seed(0)
    net = build_seg_model("drn_d_22").eval()
    images = torch.randn(1, 3, 16, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        labels = predict_labels(net, images, (32, 48))
        scores = predict_scores(net, images, (32, 48))
    assert scores.dtype == torch.float32
    assert torch.equal(labels, scores.argmax(dim=1))
