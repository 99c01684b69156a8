"""DRN backbones: official parameter names, sizes, parameter counts, ImageNet-style loading."""

from __future__ import annotations

import pytest
import torch

from model import ARCHS, MODEL_URLS, build_seg_model, count_parameters, load_weights
from model.drn import build_drn, drn_c_26, drn_d_22, drn_d_38
from utils.errors import CheckpointError

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

# Every module holding weights in DRN-D-22, written out by hand from the published layout.
D22_CONVS = [
    "layer0.0", "layer1.0", "layer2.0",
    "layer3.0.conv1", "layer3.0.conv2", "layer3.0.downsample.0", "layer3.1.conv1", "layer3.1.conv2",
    "layer4.0.conv1", "layer4.0.conv2", "layer4.0.downsample.0", "layer4.1.conv1", "layer4.1.conv2",
    "layer5.0.conv1", "layer5.0.conv2", "layer5.0.downsample.0", "layer5.1.conv1", "layer5.1.conv2",
    "layer6.0.conv1", "layer6.0.conv2", "layer6.0.downsample.0", "layer6.1.conv1", "layer6.1.conv2",
    "layer7.0", "layer8.0",
]
D22_BNS = [
    "layer0.1", "layer1.1", "layer2.1",
    "layer3.0.bn1", "layer3.0.bn2", "layer3.0.downsample.1", "layer3.1.bn1", "layer3.1.bn2",
    "layer4.0.bn1", "layer4.0.bn2", "layer4.0.downsample.1", "layer4.1.bn1", "layer4.1.bn2",
    "layer5.0.bn1", "layer5.0.bn2", "layer5.0.downsample.1", "layer5.1.bn1", "layer5.1.bn2",
    "layer6.0.bn1", "layer6.0.bn2", "layer6.0.downsample.1", "layer6.1.bn1", "layer6.1.bn2",
    "layer7.1", "layer8.1",
]


def test_drn_d_22_state_dict_names_match_the_published_layout():
    expected = {f"{m}.weight" for m in D22_CONVS} | {f"{m}.{s}" for m in D22_BNS for s in BN}
    assert set(drn_d_22().state_dict()) == expected


def test_drn_d_22_spot_check_shapes():
    sd = drn_d_22().state_dict()
    assert sd["layer0.0.weight"].shape == (16, 3, 7, 7)
    assert sd["layer2.0.weight"].shape == (32, 16, 3, 3)
    assert sd["layer3.0.downsample.0.weight"].shape == (64, 32, 1, 1)
    assert sd["layer6.0.conv1.weight"].shape == (512, 256, 3, 3)
    assert sd["layer8.0.weight"].shape == (512, 512, 3, 3)


def test_arch_c_has_conv1_bn1_and_residual_levels_1_2():
    keys = set(drn_c_26().state_dict())
    assert {"conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
            "layer7.0.conv2.weight", "layer8.0.bn2.weight"} <= keys
    assert not any(k.startswith("layer0.") for k in keys)


def test_classifier_option_adds_the_imagenet_fc():
    net = drn_d_22(num_classes=1000)
    assert net.state_dict()["fc.weight"].shape == (1000, 512, 1, 1)
    assert count_parameters(net) - count_parameters(drn_d_22()) == 513_000
    assert net.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


@pytest.mark.parametrize("name, count", [("drn_d_22", 15_880_752), ("drn_d_38", 25_988_912)])
def test_backbone_parameter_counts(name, count):
    assert count_parameters(build_drn(name)) == count


def test_every_variant_builds_with_official_first_and_deep_names():
    assert len(ARCHS) == 11
    for name in ARCHS:
        keys = set(build_drn(name).state_dict())
        assert "layer3.0.downsample.0.weight" in keys
        if name.startswith("drn_d"):
            assert {"layer0.0.weight", "layer1.0.weight", "layer8.0.weight"} <= keys
        else:
            assert {"conv1.weight", "layer1.0.conv1.weight", "layer8.0.conv1.weight"} <= keys


def test_level_outputs_have_stride_8_and_level_widths():
    net = drn_d_38().eval()
    with torch.no_grad():
        out = net.forward_levels(torch.randn(1, 3, 64, 48), list(range(1, 9)))
    assert [out[i].shape[1] for i in range(1, 9)] == list(net.level_channels)
    assert out[2].shape[-2:] == (32, 24) and out[8].shape[-2:] == (8, 6)


def test_model_urls_are_the_published_ones():
    assert MODEL_URLS["drn_d_22"] == "http://dl.yf.io/drn/drn_d_22-4bd2f8ea.pth"
    assert MODEL_URLS["drn_d_38"] == "http://dl.yf.io/drn/drn_d_38-eebb45f0.pth"
    assert set(MODEL_URLS) <= set(ARCHS)


def test_imagenet_style_checkpoint_loads_into_backbone_with_only_fc_left(tmp_path):
    imagenet = drn_d_22(num_classes=1000)
    for p in imagenet.parameters():
        torch.nn.init.normal_(p)
    # The 2017 files predate num_batches_tracked.
    sd = {k: v for k, v in imagenet.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "drn_d_22-imagenet.pth"
    torch.save(sd, path)
    net = build_seg_model("drn_d_22")
    report = load_weights(net, str(path))
    assert report.form == "drn-backbone"
    assert report.ignored == ["fc.bias", "fc.weight"]
    assert set(report.missing) == {"seg1.weight", "seg1.bias", "seg2.weight", "seg2.bias"}
    assert len(report.loaded) == len(sd) - 2
    assert torch.equal(net.base.state_dict()["layer3.0.conv1.weight"], sd["layer3.0.conv1.weight"])
    assert torch.equal(net.base.state_dict()["layer8.1.running_var"], sd["layer8.1.running_var"])


def test_imagenet_checkpoint_of_another_arch_is_refused_with_keys(tmp_path):
    path = tmp_path / "d38.pth"
    torch.save(drn_d_38(num_classes=1000).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(layer3\.2\."):
        load_weights(build_seg_model("drn_d_22"), str(path))


@pytest.mark.parametrize("name", ["drn_c_58", "drn_d_105", "drn_d_107"])
def test_big_variants_run_on_a_tiny_input(name):
    net = build_drn(name).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 16, 16)).shape == (1, 512, 2, 2)


def test_zero_init_residual_starts_every_residual_block_as_the_identity():
    from model.drn import BasicBlock, zero_init_residual

    torch.manual_seed(0)
    net = drn_d_38()
    assert zero_init_residual(net) == 3 + 4 + 6 + 3  # the residual blocks of levels 3-6
    block = net.layer5[1]  # no downsample: the shortcut is the input itself
    assert isinstance(block, BasicBlock) and block.downsample is None
    x = torch.rand(2, block.conv1.in_channels, 6, 5)  # non-negative, as after a ReLU
    assert torch.equal(block(x), x)
    # plain conv levels (7, 8) and the non-residual arch-C blocks keep their BN scale of 1
    assert torch.equal(net.layer7[1].weight, torch.ones(512))
    c26 = drn_c_26()
    zero_init_residual(c26)
    assert torch.equal(c26.layer7[0].bn2.weight, torch.ones(512))


def test_zero_init_residual_counts_bottleneck_blocks():
    from model.drn import zero_init_residual

    net = build_drn("drn_d_54")
    assert zero_init_residual(net) == 3 + 4 + 6 + 3
    assert all(not b.bn3.weight.detach().any() for b in net.layer6)


def test_build_seg_model_zero_residual_is_overwritten_by_pretrained_weights(tmp_path):
    torch.manual_seed(0)
    donor = build_drn("drn_d_22")
    path = tmp_path / "imagenet.pth"
    torch.save(donor.state_dict(), path)
    fresh = build_seg_model("drn_d_22", zero_residual=True)
    assert not fresh.base.layer3[0].bn2.weight.detach().any()
    loaded = build_seg_model("drn_d_22", pretrained=str(path), zero_residual=True)
    assert torch.equal(loaded.base.layer3[0].bn2.weight, donor.layer3[0].bn2.weight)
