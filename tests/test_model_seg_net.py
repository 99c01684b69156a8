"""The multi-level segmentation net and the discriminator: shapes, log-probabilities, counts, export."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from model import ARCHS, DEFAULT_AUX_LAYER, Discriminator, SegNet, build_seg_model, count_parameters
from tests.tolerances import assert_as_accurate
from utils.errors import ConfigError


@pytest.fixture(scope="module")
def student() -> SegNet:
    torch.manual_seed(0)
    return build_seg_model("drn_d_22").eval()


@pytest.mark.parametrize("size", [(64, 64), (64, 32), (50, 70), (33, 17)])
def test_outputs_have_the_input_size_for_any_size(student, size):
    with torch.no_grad():
        aux, main = student(torch.randn(2, 3, *size))
    assert aux.shape == main.shape == (2, 19, *size)


def test_output_size_overrides_the_input_size(student):
    with torch.no_grad():
        aux, main = student(torch.randn(1, 3, 64, 32), output_size=(100, 45))
    assert aux.shape == main.shape == (1, 19, 100, 45)


def test_outputs_are_log_probabilities(student):
    with torch.no_grad():
        for out in student(torch.randn(1, 3, 40, 56)):
            assert torch.allclose(out.exp().sum(1), torch.ones(1, 40, 56), atol=1e-5)
            assert (out <= 0).all()


def test_default_aux_levels_and_override():
    assert build_seg_model("drn_d_22").aux_layer == 6
    assert build_seg_model("drn_d_38").aux_layer == 7
    assert build_seg_model("drn_d_22", aux_layer=5).seg2.in_channels == 256
    assert set(DEFAULT_AUX_LAYER) == set(ARCHS)


def test_aux_head_reads_the_chosen_level(student):
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        level6 = student.base.forward_levels(x, [6])[6]
        logits = student.seg2(level6)
        aux, _ = student(x, output_size=(4, 4))  # the stride-8 grid: upsampling is the identity
    assert torch.allclose(aux, torch.log_softmax(logits, 1), atol=1e-5)


@pytest.mark.parametrize("arch, count", [("drn_d_22", 15_900_246), ("drn_d_38", 26_008_406)])
def test_parameter_counts(arch, count):
    assert count_parameters(build_seg_model(arch)) == count


def test_head_init_and_class_count():
    net = build_seg_model("drn_d_22", num_classes=7)
    assert net.seg1.out_channels == net.seg2.out_channels == 7
    assert torch.count_nonzero(net.seg1.bias) == 0
    std = net.seg1.weight.std().item()
    assert 0.8 * (2 / 7) ** 0.5 < std < 1.2 * (2 / 7) ** 0.5


def test_bad_arch_or_level_is_a_config_error():
    with pytest.raises(ConfigError, match="drn_d_22"):
        build_seg_model("resnet50")
    with pytest.raises(ConfigError, match="aux_layer"):
        build_seg_model("drn_d_22", aux_layer=9)
    with pytest.raises(ConfigError, match="no published ImageNet weights"):
        build_seg_model("drn_d_24", pretrained="imagenet")


def test_both_heads_losses_send_gradients_to_every_parameter():
    # (a frozen teacher getting no gradient is checked through a real training step in test_steps.py)
    from utils.loss import seg_loss

    torch.manual_seed(0)
    student = build_seg_model("drn_d_22").train()
    x = torch.randn(2, 3, 32, 32)
    y = torch.randint(0, 19, (2, 32, 32))
    s_aux, s_main = student(x)
    (seg_loss(s_main, y) + 0.1 * seg_loss(s_aux, y)).backward()
    no_grad = [n for n, p in student.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    # the aux head reads level 6: levels 7-8 and the main head learn from the main loss alone
    student.zero_grad()
    _, s_main = student(x)
    seg_loss(s_main, y).backward()
    assert student.seg2.weight.grad is None or not student.seg2.weight.grad.any()
    assert student.base.layer8[0].weight.grad.abs().sum() > 0


@pytest.mark.float_sensitive
def test_bf16_autocast_and_channels_last_on_cpu(student):
    x = torch.randn(1, 3, 64, 64)
    net = build_seg_model("drn_d_22").eval()
    net.load_state_dict(student.state_dict())
    with torch.no_grad():
        _, ref = student(x)
        _, exact = copy.deepcopy(student).double()(x.double())
        net = net.to(memory_format=torch.channels_last)
        _, main_cl = net(x.to(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            aux, main = net(x.to(memory_format=torch.channels_last))
    assert_as_accurate(main_cl, ref, exact, what="channels-last")  # other kernels, other summation order
    assert main.shape == aux.shape == (1, 19, 64, 64)
    assert main.dtype == torch.float32 and torch.isfinite(main).all()
    assert torch.allclose(main.exp().sum(1), torch.ones(1, 64, 64), atol=1e-3)


def test_torchscript_matches_eager(student):
    x = torch.randn(1, 3, 40, 24)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(student)
    with torch.no_grad():
        for a, b in zip(scripted(x), student(x)):
            assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.float_sensitive
def test_onnx_export_with_dynamic_height_and_width(student, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    path = tmp_path / "net.onnx"
    axes = {0: "n", 2: "h", 3: "w"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(student, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["aux", "main"],
                          dynamic_axes={"image": axes, "aux": axes, "main": axes})
    x = torch.randn(1, 3, 50, 70)
    got = ort.InferenceSession(str(path)).run(None, {"image": x.numpy()})
    with torch.no_grad():
        want = student(x)
        exact = copy.deepcopy(student).double()(x.double())
    for name, a, b, e in zip(("aux", "main"), got, want, exact):
        assert a.shape == (1, 19, 50, 70)
        assert_as_accurate(torch.from_numpy(a), b, e, what=f"onnxruntime {name}")  # ONNX Runtime's own kernels


@pytest.mark.parametrize("size", [(64, 64), (64, 128)])
def test_discriminator_maps_probabilities_to_a_stride_32_logit_map(size):
    disc = Discriminator(num_classes=19)
    probs = torch.softmax(torch.randn(2, 19, *size), 1)
    assert disc(probs).shape == (2, 1, size[0] // 32, size[1] // 32)
    names = {k.split(".")[0] for k in disc.state_dict()}
    assert names == {"conv1", "conv2", "conv3", "conv4", "classifier"}
    assert [m.out_channels for m in (disc.conv1, disc.conv2, disc.conv3, disc.conv4, disc.classifier)] == [
        64, 128, 256, 512, 1]
    assert disc.leaky_relu.negative_slope == 0.2


def test_main_logits_give_the_main_heads_prediction_and_probabilities():
    torch.manual_seed(0)
    net = build_seg_model("drn_d_22").eval()
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        main = net(x, output_size=(80, 112))[1]
        logits = net.main_logits(x, output_size=(80, 112))
    assert logits.shape == (2, 19, 80, 112)
    assert torch.equal(logits.argmax(1), main.argmax(1))
    torch.testing.assert_close(logits.softmax(1), main.exp(), atol=1e-5, rtol=1e-4)
