"""imgclsmob (pytorchcv) DRN weights renamed to ours compute the same features and logits as in pytorchcv.

pytorchcv is a test-only dependency (requirements-dev.txt): its models are built with random weights
(pretrained=False, no download) and serve as the reference implementation of its naming.
"""

from __future__ import annotations

import io
import zipfile

import pytest
import torch
from torch import nn

from model import build_drn, build_seg_model, imgclsmob, load_weights
from utils.errors import CheckpointError

drn_zoo = pytest.importorskip("pytorchcv.models.drn")


def theirs(arch: str, seed: int = 0) -> nn.Module:
    """pytorchcv's model for ``arch`` with random weights and batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    net = getattr(drn_zoo, imgclsmob.ZOO_NAMES[arch])(pretrained=False)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
        net.output.bias.normal_()
    return net.eval()


def outputs(net: nn.Module, arch: str, x: torch.Tensor) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """(features of levels 1..8, logits) of a pytorchcv DRN, read with forward hooks."""
    features: dict[int, torch.Tensor] = {}
    modules = dict(net.named_modules())
    hooks = [modules[name].register_forward_hook(lambda m, i, o, level=level: features.__setitem__(level, o))
             for level, name in imgclsmob.level_modules(arch).items()]
    with torch.no_grad():
        logits = net(x)
    for hook in hooks:
        hook.remove()
    return features, logits


# In float64, so that 1e-5 measures the renaming, not float32 summation order. pytorchcv pools a fixed
# 28x28 window (the level-8 map of a 224x224 image); made global, the same mean fits a 48x48 input.
# D-22 and D-38 (ours), and one DRN of each other kind both zoos have: C basic, C bottleneck (with its
# neutral level-7 shortcut), D bottleneck. C-42 and D-105 only repeat those blocks.
@pytest.mark.parametrize("arch", ["drn_d_22", "drn_d_38", "drn_c_26", "drn_c_58", "drn_d_54"])
def test_converted_weights_give_the_same_features_and_logits(arch):
    ref = theirs(arch)
    ref.features.final_pool = nn.AdaptiveAvgPool2d(1)
    found, state = imgclsmob.to_ours(ref.state_dict())
    assert found == arch
    ours = build_drn(arch, num_classes=1000).eval()
    ours.load_state_dict(state, strict=True)
    ref, ours = ref.double(), ours.double()
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    their_levels, their_logits = outputs(ref, arch, x)
    with torch.no_grad():
        our_levels = ours.forward_levels(x, list(range(1, 9)))
        our_logits = ours.fc(ours.avgpool(our_levels[8])).flatten(1)  # what ours(x) computes
    for level in range(1, 9):
        torch.testing.assert_close(our_levels[level], their_levels[level], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(our_logits, their_logits, rtol=1e-5, atol=1e-5)
    assert their_logits.std() > 0.1  # not a comparison of near-zero numbers


def _zip_of(state: dict, name: str) -> bytes:
    blob = io.BytesIO()
    torch.save(state, blob)
    packed = io.BytesIO()
    with zipfile.ZipFile(packed, "w") as archive:
        archive.writestr(name, blob.getvalue())
    return packed.getvalue()


@pytest.mark.parametrize("packed", [False, True])
def test_an_imgclsmob_file_loads_into_our_backbone_as_pth_or_zip(packed, tmp_path):
    state = theirs("drn_d_22").state_dict()
    path = tmp_path / ("drnd22-0758-02cb44bd.pth" + (".zip" if packed else ""))
    if packed:
        path.write_bytes(_zip_of(state, "drnd22-0758-02cb44bd.pth"))
    else:
        torch.save(state, path)
    net = build_seg_model("drn_d_22")
    report = load_weights(net, str(path))
    assert report.form == "imgclsmob" and report.ignored == ["fc.bias", "fc.weight"]
    assert torch.equal(net.base.layer3[1].conv2.weight, state["features.stage3.unit2.body.conv2.conv.weight"])
    assert torch.equal(net.base.layer0[1].running_var, state["features.init_block.bn.running_var"])


def test_an_imgclsmob_file_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "drnd38.pth"
    torch.save(theirs("drn_d_38").state_dict(), path)
    with pytest.raises(CheckpointError, match=r"drnd38\.pth \(imgclsmob\) does not fit drn_d_22"):
        load_weights(build_seg_model("drn_d_22"), str(path))


def test_a_zip_with_several_pth_files_is_refused(tmp_path):
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.pth", b"1")
        archive.writestr("b.pth", b"2")
    with pytest.raises(CheckpointError, match=r"two\.zip is a zip holding 2 \.pth files"):
        load_weights(build_seg_model("drn_d_22"), str(path))
