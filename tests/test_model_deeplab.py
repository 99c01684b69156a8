"""DeepLab-v2 ResNet-101: the same function and keys as AdaptSegNet's DeeplabMulti and ADVENT's net, frozen batch
norm, 10x classifier groups, the Caffe input conversion, and every checkpoint form of theirs.

The reference is built independently from torchvision's ResNet-101, changed as DeepLab-v2's Caffe model is built
(each block's stride in its first 1x1 convolution, ceil-mode max-pool, dilations 2 and 4 in layer3 and layer4),
with the ASPP classifiers as plain sums of F.conv2d; weights are copied by name (torchvision's names are the
published ones). Sizes are tiny: ResNet-101 on two CPU cores.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from dataset.transforms import IMAGENET_MEAN, IMAGENET_STD, to_normalized
from model import build_from_checkpoint, build_seg_model, deeplab, load_weights, param_groups
from model.deeplab import ADAPTSEGNET_ARCH, ARCH, CAFFE_MEAN_BGR, DeepLabV2
from utils.errors import CheckpointError, ConfigError

SIZE = (33, 65)  # odd sides: the ceil-mode max-pool and the strided 1x1 convolutions round as Caffe does


def _randomise(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights and batch-norm statistics far from their initial values, so that nothing matches by accident."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if not t.dtype.is_floating_point:
                continue
            if name.endswith(("running_var", "bn1.weight", "bn2.weight", "bn3.weight", "1.weight")) and t.ndim == 1:
                t.copy_(0.5 + torch.rand(t.shape, generator=gen))
            else:
                fan_in = t[0].numel() if t.ndim > 1 else 1
                t.copy_(torch.randn(t.shape, generator=gen) / fan_in ** 0.5)
    return net.eval()


@pytest.fixture(scope="module")
def nets() -> dict[str, DeepLabV2]:
    """Both DeepLab-v2 architectures, with the same random weights."""
    four = _randomise(build_seg_model(ARCH), 0)
    two = build_seg_model(ADAPTSEGNET_ARCH).eval()
    two.load_state_dict(four.state_dict())
    return {ARCH: four, ADAPTSEGNET_ARCH: two}


def _reference_backbone() -> torchvision.models.ResNet:
    """torchvision's ResNet-101 rebuilt as DeepLab-v2's Caffe ResNet-101."""
    ref = torchvision.models.resnet101(weights=None)
    ref.maxpool.ceil_mode = True
    for stage, dilation in ((ref.layer2, 1), (ref.layer3, 2), (ref.layer4, 4)):
        first = stage[0]
        stride = 2 if stage is ref.layer2 else 1
        first.conv1.stride, first.conv2.stride = (stride, stride), (1, 1)
        first.downsample[0].stride = (stride, stride)
        for block in stage:
            block.conv2.dilation = block.conv2.padding = (dilation, dilation)
    return ref


def _reference(net: DeepLabV2, x: torch.Tensor, branches: int):
    """(layer3, layer4, aux logits, main logits) of the torchvision rebuild given ``net``'s weights."""
    ref = _reference_backbone()
    state = {k: v for k, v in net.state_dict().items() if not k.startswith(("layer5.", "layer6."))}
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert unexpected == [] and sorted(missing) == ["fc.bias", "fc.weight"]
    ref.eval()
    with torch.no_grad():
        x = ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))
        low = ref.layer3(ref.layer2(ref.layer1(x)))
        high = ref.layer4(low)

        def aspp(feats, head):
            return sum(F.conv2d(feats, head.conv2d_list[i].weight, head.conv2d_list[i].bias, padding=d, dilation=d)
                       for i, d in enumerate((6, 12, 18, 24)[:branches]))

        return low, high, aspp(low, net.layer5), aspp(high, net.layer6)


@pytest.mark.parametrize("arch, branches", [(ARCH, 4), (ADAPTSEGNET_ARCH, 2)])
def test_features_and_logits_equal_the_torchvision_rebuild(nets, arch, branches):
    net = nets[arch]
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(1)) * 60
    low, high, aux, main = _reference(net, x, branches)
    with torch.no_grad():
        ours_low, ours_high = net.features(x)
        ours_aux, ours_main = net.caffe_logits(x)
    assert ours_low.shape == (1, 1024, 5, 9) and ours_high.shape == (1, 2048, 5, 9)  # stride 8, rounded up
    for ours, theirs in ((ours_low, low), (ours_high, high), (ours_aux, aux), (ours_main, main)):
        scale = float(theirs.abs().max())
        assert scale > 1e-2
        assert float((ours - theirs).abs().max()) <= 1e-4 * scale


def test_the_adaptsegnet_classifier_sums_the_first_two_branches_only(nets):
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(2)) * 60
    with torch.no_grad():
        aux4, main4 = nets[ARCH].caffe_logits(x)
        aux2, main2 = nets[ADAPTSEGNET_ARCH].caffe_logits(x)
        low, high = nets[ARCH].features(x)
        extra = nets[ARCH].layer6.conv2d_list[2](high) + nets[ARCH].layer6.conv2d_list[3](high)
    assert torch.allclose(main4 - main2, extra, atol=1e-4 * float(extra.abs().max()))
    assert not torch.allclose(aux4, aux2)


def test_state_dict_keys_and_shapes_are_the_published_ones(nets):
    """DeeplabMulti's state dict: torchvision's ResNet-101 names without fc, plus the two 4-branch classifiers."""
    ours = {k: tuple(v.shape) for k, v in nets[ARCH].state_dict().items()}
    tv = {k: tuple(v.shape) for k, v in torchvision.models.resnet101(weights=None).state_dict().items()
          if not k.startswith("fc.")}
    heads = {f"layer{n}.conv2d_list.{i}.{p}": (19, ch, 3, 3) if p == "weight" else (19,)
             for n, ch in ((5, 1024), (6, 2048)) for i in range(4) for p in ("weight", "bias")}
    assert ours == {**tv, **heads}
    assert len(ours) == 640 and sum(k.startswith("layer3.") and k.endswith("conv1.weight") for k in ours) == 23


def test_normalised_rgb_in_is_caffe_bgr_minus_the_mean_inside():
    image = torch.randint(0, 256, (3, *SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    caffe = image.flip(0).float() - torch.tensor(CAFFE_MEAN_BGR).view(3, 1, 1)
    converted = deeplab.CaffeInput()(to_normalized(image)[None])[0]
    assert float((converted - caffe).abs().max()) < 1e-3
    assert (deeplab.IMAGENET_MEAN, deeplab.IMAGENET_STD) == (IMAGENET_MEAN, IMAGENET_STD)


def test_forward_is_the_upsampled_log_softmax_of_the_caffe_logits(nets):
    net = nets[ARCH]
    x = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        aux, main = net(x)
        raw_aux, raw_main = net.caffe_logits(net.caffe_input(x))
        main_logits = net.main_logits(x, (40, 70))
    assert aux.shape == main.shape == (2, 19, *SIZE)
    up = F.interpolate(raw_main, size=SIZE, mode="bilinear", align_corners=True)
    assert torch.allclose(main, up.log_softmax(1), atol=1e-4)
    assert torch.allclose(aux.exp().sum(1), torch.ones(2, *SIZE), atol=1e-5)
    assert torch.equal(main_logits, F.interpolate(raw_main, size=(40, 70), mode="bilinear", align_corners=True))


def test_batch_norm_affine_is_frozen_and_the_classifiers_train_at_ten_times_the_rate(nets):
    net = nets[ARCH]
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 104 and all(not p.requires_grad for m in bns for p in m.parameters())
    groups = param_groups(net)
    assert [g["lr_mult"] for g in groups] == [1.0, 10.0]
    names = {id(p): n for n, p in net.named_parameters()}
    backbone, heads = ([names[id(p)] for p in g["params"]] for g in groups)
    assert len(backbone) == len(set(backbone)) == 104 and all("bn" not in n and "downsample.1" not in n
                                                              for n in backbone)
    assert sorted(heads) == sorted(n for n in names.values() if n.startswith(("layer5.", "layer6.")))
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert set(backbone) | set(heads) == trainable


def test_the_schedule_keeps_the_ten_times_ratio_and_a_step_leaves_batch_norm_affine_alone():
    from utils.config import TrainConfig
    from utils.optim import Optimisers

    torch.manual_seed(0)
    net = build_seg_model(ADAPTSEGNET_ARCH, num_classes=3)
    cfg = TrainConfig(arch=ADAPTSEGNET_ARCH, learning_rate=2.5e-4, num_classes=3)
    optimisers = Optimisers(net, (torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)), cfg, "cpu")
    optimisers.start_phase(100, ())
    opt = optimisers.net_opt
    optimisers.schedule(0)
    assert [g["lr"] for g in opt.param_groups] == [2.5e-4, 2.5e-3]
    optimisers.schedule(30)
    assert opt.param_groups[1]["lr"] == pytest.approx(10 * opt.param_groups[0]["lr"]) and \
        opt.param_groups[0]["lr"] == pytest.approx(2.5e-4 * 0.7 ** 0.9)
    bn_before = net.bn1.weight.detach().clone()
    conv_before = net.conv1.weight.detach().clone()
    net.train()
    aux, main = net(torch.randn(1, 3, *SIZE))
    (aux.mean() + main.mean()).backward()
    opt.step()
    assert torch.equal(net.bn1.weight, bn_before) and net.bn1.weight.grad is None
    assert not torch.equal(net.conv1.weight, conv_before)


def test_zero_init_residual_is_refused_for_frozen_batch_norm():
    with pytest.raises(ConfigError, match="frozen"):
        build_seg_model(ARCH, zero_residual=True)


def test_the_aux_tap_is_layer3_whatever_drn_level_a_script_passes():
    assert build_seg_model(ARCH, aux_layer=7).aux_layer == 3


# --- their checkpoints -------------------------------------------------------------------------------------------
def _init_file(nets, prefix: str = "Scale.") -> dict[str, torch.Tensor]:
    """A DeepLab-v2 initialisation as AdaptSegNet and ADVENT publish it: the backbone under one outer name, with the
    single-scale net's classifier (21 classes on layer4) that no multi-level net uses."""
    state = {prefix + k: v for k, v in nets[ARCH].state_dict().items()
             if not k.startswith(("layer5.", "layer6.")) and not k.endswith("num_batches_tracked")}
    for i in range(4):
        state[f"{prefix}layer5.conv2d_list.{i}.weight"] = torch.randn(21, 2048, 3, 3)
        state[f"{prefix}layer5.conv2d_list.{i}.bias"] = torch.randn(21)
    return state


def test_their_trained_state_dicts_load_unchanged_and_need_the_arch_named(nets, tmp_path):
    plain = tmp_path / "GTA2Cityscapes_multi.pth"
    torch.save(nets[ADAPTSEGNET_ARCH].state_dict(), plain)
    with pytest.raises(CheckpointError, match=f"--arch {ARCH} .*--arch {ADAPTSEGNET_ARCH}"):
        build_from_checkpoint(plain)
    net = build_from_checkpoint(plain, arch=ADAPTSEGNET_ARCH)
    assert net.arch == ADAPTSEGNET_ARCH and net.num_classes == 19
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        assert torch.equal(net.eval()(x)[1], nets[ADAPTSEGNET_ARCH](x)[1])
    wrapped = tmp_path / "ddp.pth"
    torch.save({"module." + k: v for k, v in nets[ARCH].state_dict().items()}, wrapped)
    report = load_weights(build_seg_model(ARCH), wrapped)
    assert report.form == "deeplab" and report.missing == [] and len(report.loaded) == 640


def test_an_initialisation_file_fills_the_backbone_and_leaves_the_heads(nets, tmp_path):
    path = tmp_path / "DeepLab_resnet_pretrained_imagenet.pth"
    torch.save(_init_file(nets), path)
    fresh = build_seg_model(ARCH)
    heads_before = fresh.layer6.conv2d_list[0].weight.detach().clone()
    report = load_weights(fresh, path)
    assert report.form == "deeplab-backbone"
    assert report.ignored == sorted(f"layer5.conv2d_list.{i}.{p}" for i in range(4) for p in ("bias", "weight"))
    assert len(report.missing) == 16 and all(k.startswith(("layer5.", "layer6.")) for k in report.missing)
    assert torch.equal(fresh.layer4[2].conv3.weight, nets[ARCH].layer4[2].conv3.weight)
    assert torch.equal(fresh.layer6.conv2d_list[0].weight, heads_before)
    with pytest.raises(CheckpointError, match="without the segmentation heads"):
        build_from_checkpoint(path, arch=ARCH)
    with pytest.raises(CheckpointError, match="does not fit drn_d_22"):
        load_weights(build_seg_model("drn_d_22"), path)


def test_convert_writes_a_final_file_that_names_the_arch(nets, tmp_path):
    from model.weights import main as weights_main

    plain = tmp_path / "their.pth"
    torch.save(nets[ARCH].state_dict(), plain)
    out = tmp_path / "final.pth"
    assert weights_main(["convert", str(plain), str(out), "--arch", ARCH]) == 0
    final = torch.load(out, weights_only=True)
    assert (final["format"], final["arch"], final["aux_layer"], final["num_classes"]) == ("dakd-final", ARCH, 3, 19)
    assert build_from_checkpoint(out).arch == ARCH


# --- published initialisations --------------------------------------------------------------------------------
def test_the_initialisation_chains_name_advent_and_adaptsegnet():
    from model.pretrained import sources

    imagenet, coco = sources(ARCH, "imagenet"), sources(ADAPTSEGNET_ARCH, "coco")
    advent = "https://github.com/valeoai/ADVENT/releases/download/v0.1/DeepLab_resnet_pretrained_imagenet.pth"
    adaptsegnet = "http://vllab.ucmerced.edu/ytsai/CVPR18/DeepLab_resnet_pretrained_init-f81d91e8.pth"
    assert [s.url for s in imagenet] == [advent, "https://web.archive.org/web/2019id_/" + advent]
    assert {(s.algorithm, s.digest) for s in imagenet} == {("content", "")}
    assert [s.url for s in coco] == [adaptsegnet, "https://web.archive.org/web/2019id_/" + adaptsegnet]
    assert {(s.algorithm, s.digest) for s in coco} == {("sha256", "f81d91e8")}
    assert sources("drn_d_22", "coco") == []
    with pytest.raises(ConfigError, match="no published ImageNet \\+ MS-COCO weights for drn_d_22"):
        build_seg_model("drn_d_22", pretrained="coco")


class _Serve:
    """A fake opener: bytes per URL, every other URL unreachable."""

    def __init__(self, answers: dict[str, bytes]):
        self.answers = answers

    def __call__(self, url: str, timeout: float):
        import io
        import urllib.error

        if url not in self.answers:
            raise urllib.error.URLError("[Errno -2] Name or service not known")
        return io.BytesIO(self.answers[url])


def test_the_imagenet_file_is_checked_by_its_content_and_cached(nets, tmp_path):
    import io

    from model.pretrained import fetch, sources

    good, wrong = io.BytesIO(), io.BytesIO()
    torch.save(_init_file(nets), good)
    torch.save({"Scale.conv1.weight": torch.zeros(64, 3, 7, 7)}, wrong)
    first, archived = (s.url for s in sources(ARCH))
    with pytest.raises(CheckpointError, match=r"\(ValueError: 519 backbone tensors missing \(first: bn1\.weight\)\)"):
        fetch(ARCH, cache_dir=str(tmp_path), opener=_Serve({first: wrong.getvalue()}), progress=False,
              log=lambda _: None)
    assert list(tmp_path.iterdir()) == []
    path, source = fetch(ARCH, cache_dir=str(tmp_path), opener=_Serve({archived: good.getvalue()}), progress=False,
                         log=lambda _: None)
    assert source.url == archived and path == str(tmp_path / "DeepLab_resnet_pretrained_imagenet.pth")
    again, _ = fetch(ADAPTSEGNET_ARCH, cache_dir=str(tmp_path), opener=_Serve({}), progress=False)
    assert again == path  # both DeepLab architectures share the file, found without the network


def test_the_coco_file_is_checked_against_its_sha256_prefix_and_offline_says_how_to_fetch(tmp_path, capsys):
    from model.pretrained import fetch, sources
    from model.weights import main as weights_main
    from utils.cli import run_cli

    url = sources(ARCH, "coco")[0].url
    with pytest.raises(CheckpointError, match="checksum mismatch: sha256"):
        fetch(ARCH, cache_dir=str(tmp_path), opener=_Serve({url: b"not the file"}), progress=False, init="coco")
    assert run_cli(weights_main, ["fetch", ARCH, "--init", "coco", "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"no ImageNet + MS-COCO weights for {ARCH}: every source failed: {url}" in err
    assert f"python -m model.weights fetch {ARCH} --init coco" in err and list(tmp_path.iterdir()) == []


def test_the_param_group_benchmark_counts_their_repeated_listing(capsys):
    from bench.deeplab_param_groups import main

    assert main([]) == 0
    out = capsys.readouterr().out
    assert "their 1x group: 314 entries for 104 parameters; appearances -> parameters: {1: 1, 3: 99, 4: 4}" in out
    assert "our 1x group: 104 entries for 104 parameters" in out and "steps 1..5: 3.00, " in out
