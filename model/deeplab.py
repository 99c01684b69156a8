"""DeepLab-v2 ResNet-101 with two heads: the multi-level net of AdaptSegNet and ADVENT.

The backbone is ResNet-101 (3, 4, 23, 3 bottleneck blocks) as DeepLab-v2's Caffe model has it: the
stride of a block sits in its first 1x1 convolution, the max-pool rounds up (ceil mode), layer3 and
layer4 keep stride 1 with dilations 2 and 4 (output stride 8). Two ASPP classifiers, each a sum of
3x3 convolutions with dilations 6, 12, 18 and 24 straight to the classes: ``layer5`` on layer3 (1024
channels, the auxiliary head) and ``layer6`` on layer4 (2048 channels, the main head).

Module and parameter names are those of AdaptSegNet's ``DeeplabMulti`` and ADVENT's ``get_deeplab_v2``
(``conv1``, ``bn1``, ``layer1.0.downsample.0``, ``layer5.conv2d_list.3`` ...), so their state dicts
load unchanged. Two architectures differ only in how a classifier sums its branches:

- ``deeplabv2_resnet101``: all four branches, as DeepLab-v2 defines ASPP and as ADVENT computes it;
- ``deeplabv2_resnet101_adaptsegnet``: the first two branches only (dilations 6 and 12), as
  AdaptSegNet's ``DeeplabMulti`` computes it (its loop returns after the second branch; the original
  DAKD code keeps that file). Branches 3 and 4 keep their weights, which never receive a gradient.

Batch norm as AdaptSegNet and ADVENT train it: the affine parameters are frozen (``requires_grad``
False); the statistics follow the module's train/eval mode. ``param_groups`` gives the classifiers 10x
the backbone's learning rate.

The weights expect Caffe's input convention (BGR, 0..255, minus the ImageNet mean in BGR, no scaling);
the net takes the repo's one normalisation (RGB in [0, 1], ImageNet mean/std, ``dataset.transforms``)
and converts it on the way in (``CaffeInput``), so the loaders stay the same for every architecture.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from model.drn import Bottleneck
from model.seg_net import TwoHeads, upsample_log_probs
from utils.errors import ConfigError

ARCH = "deeplabv2_resnet101"
ADAPTSEGNET_ARCH = "deeplabv2_resnet101_adaptsegnet"
ASPP_BRANCHES: dict[str, int] = {ARCH: 4, ADAPTSEGNET_ARCH: 2}
"""Architecture -> how many ASPP branches its classifiers sum."""
DEEPLAB_ARCHS: tuple[str, ...] = tuple(ASPP_BRANCHES)

BLOCKS = (3, 4, 23, 3)  # ResNet-101
ASPP_DILATIONS = (6, 12, 18, 24)
AUX_LAYER = 3
"""The ResNet stage the auxiliary head reads (layer3, 1024 channels); the main head reads layer4."""
HEADS = ("layer5", "layer6")  # aux classifier, main classifier
LR_MULT_HEADS = 10.0

# Caffe's ImageNet mean (BGR, 0..255), as AdaptSegNet's and ADVENT's loaders subtract it.
CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)
# The repo's normalisation (dataset.transforms.NORMALIZE); a test checks that the two agree.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CaffeInput(nn.Module):
    """Normalised RGB (ImageNet mean/std) -> Caffe's BGR in 0..255 minus the mean: one multiply-add."""

    def __init__(self) -> None:
        super().__init__()
        bgr = [2, 1, 0]
        scale = torch.tensor([255.0 * IMAGENET_STD[c] for c in bgr]).view(1, 3, 1, 1)
        shift = torch.tensor([255.0 * IMAGENET_MEAN[c] - m for c, m in zip(bgr, CAFFE_MEAN_BGR)]).view(1, 3, 1, 1)
        # Constants, not weights: not in the state dict, so the published key sets stay as they are.
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("shift", shift, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """The Caffe-convention image of normalised RGB images ``x`` (N, 3, H, W)."""
        return torch.addcmul(self.shift.to(x.dtype), x.flip(1), self.scale.to(x.dtype))


class ASPPClassifier(nn.Module):
    """Dilated 3x3 convolutions from features to class logits, summed over the first ``branches``."""

    def __init__(self, in_ch: int, num_classes: int, branches: int = len(ASPP_DILATIONS)) -> None:
        super().__init__()
        if not 1 <= branches <= len(ASPP_DILATIONS):
            raise ValueError(f"branches must be 1..{len(ASPP_DILATIONS)}, got {branches}")
        self.branches = branches
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(in_ch, num_classes, 3, padding=d, dilation=d, bias=True) for d in ASPP_DILATIONS)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits at the features' resolution."""
        out = self.conv2d_list[0](x)
        for i, conv in enumerate(self.conv2d_list):
            if 0 < i < self.branches:
                out = out + conv(x)
        return out

    def extra_repr(self) -> str:
        return f"branches={self.branches}, dilations={ASPP_DILATIONS[:self.branches]}"


class DeepLabV2(TwoHeads, nn.Module):
    """DeepLab-v2 ResNet-101, aux head ``layer5`` on layer3, main head ``layer6`` on layer4.

    ``forward`` returns ``(aux, main)`` log-probabilities (N, num_classes, H, W) at the input's size
    (or ``output_size``), each head's stride-8 logits upsampled bilinearly (align_corners=True): the
    interface of ``model.seg_net.SegNet``.
    """

    MAIN_HEAD, AUX_HEAD = "layer6", "layer5"

    def __init__(self, arch: str = ARCH, num_classes: int = 19, aux_layer: Optional[int] = None) -> None:
        super().__init__()
        if arch not in ASPP_BRANCHES:
            raise ConfigError(f"unknown DeepLab-v2 architecture {arch!r}; choose one of {', '.join(DEEPLAB_ARCHS)}")
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.arch = arch
        self.num_classes = num_classes
        # One tap: a DRN level given for the aux head (a script's AUX_LAYER) does not apply here.
        self.aux_layer = resolve_aux_layer(aux_layer)
        self.caffe_input = CaffeInput()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self._in_ch = 64
        self.layer1 = self._stage(64, BLOCKS[0])
        self.layer2 = self._stage(128, BLOCKS[1], stride=2)
        self.layer3 = self._stage(256, BLOCKS[2], dilation=2)
        self.layer4 = self._stage(512, BLOCKS[3], dilation=4)
        branches = ASPP_BRANCHES[arch]
        self.layer5 = ASPPClassifier(1024, num_classes, branches)
        self.layer6 = ASPPClassifier(2048, num_classes, branches)
        self._init_weights()
        freeze_batchnorm_affine(self)

    def _stage(self, planes: int, count: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        out_ch = planes * Bottleneck.expansion
        # DeepLab-v2 gives every stage's first block a projection shortcut (the dilated stages too).
        downsample = nn.Sequential(nn.Conv2d(self._in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))
        # Caffe's bottleneck: the stride in the first 1x1 convolution, one dilation in the 3x3
        blocks = [Bottleneck(self._in_ch, planes, stride, downsample, (dilation, dilation), stride_in_1x1=True)]
        self._in_ch = out_ch
        blocks += [Bottleneck(out_ch, planes, dilation=(dilation, dilation), stride_in_1x1=True)
                   for _ in range(1, count)]
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        # As AdaptSegNet and ADVENT initialise it: every convolution N(0, 0.01), batch norm identity.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.01)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(layer3, layer4) features, both at stride 8, of a Caffe-convention image ``x``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer3(self.layer2(self.layer1(x)))
        return low, self.layer4(low)

    def caffe_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(aux, main) logits at stride 8 of a Caffe-convention image: ``DeeplabMulti.forward``."""
        low, high = self.features(x)
        return self.layer5(low), self.layer6(high)

    def forward(self, x: Tensor, output_size: Optional[tuple[int, int]] = None) -> tuple[Tensor, Tensor]:
        """``(aux, main)`` log-probabilities at ``output_size`` (H, W), by default the input's size."""
        size = [x.shape[2], x.shape[3]] if output_size is None else [output_size[0], output_size[1]]
        aux, main = self.caffe_logits(self.caffe_input(x))
        return upsample_log_probs(aux, size), upsample_log_probs(main, size)

    def main_logits(self, x: Tensor, output_size: Optional[tuple[int, int]] = None) -> Tensor:
        """Main-head logits at ``output_size`` (H, W), for inference: no aux head, no log-softmax."""
        size = [x.shape[2], x.shape[3]] if output_size is None else [output_size[0], output_size[1]]
        _, high = self.features(self.caffe_input(x))
        return F.interpolate(self.layer6(high), size=size, mode="bilinear", align_corners=True)

    def param_groups(self) -> list[dict]:
        """Trainable parameters in optimiser groups: the backbone at 1x the learning rate, the two
        classifiers at 10x (``lr_mult``), as AdaptSegNet's and ADVENT's ``optim_parameters``."""
        heads = {id(p) for name in HEADS for p in getattr(self, name).parameters()}
        backbone = [p for p in self.parameters() if p.requires_grad and id(p) not in heads]
        classifiers = [p for name in HEADS for p in getattr(self, name).parameters() if p.requires_grad]
        return [{"params": backbone, "lr_mult": 1.0}, {"params": classifiers, "lr_mult": LR_MULT_HEADS}]

    def extra_repr(self) -> str:
        return f"arch={self.arch}, num_classes={self.num_classes}, aspp_branches={ASPP_BRANCHES[self.arch]}"


def resolve_aux_layer(aux_layer: Optional[int]) -> int:
    """The aux tap of a DeepLab-v2 net: always layer3; a DRN level asked for does not apply (see docs)."""
    del aux_layer  # the training scripts pass their DRN level (AUX_LAYER) whatever the --arch
    return AUX_LAYER


def freeze_batchnorm_affine(net: nn.Module) -> int:
    """Stop training the scale and shift of every batch norm in ``net``; return how many were frozen."""
    count = 0
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for p in (m.weight, m.bias):
                if p is not None:
                    p.requires_grad_(False)
            count += 1
    return count


@functools.cache
def backbone_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of every backbone tensor (no heads, no ``num_batches_tracked``), without allocating."""
    with torch.device("meta"):
        net = DeepLabV2(ARCH, num_classes=19)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()
            if not k.startswith(tuple(h + "." for h in HEADS)) and not k.endswith("num_batches_tracked")}


def strip_wrapper_prefix(state: dict[str, Tensor]) -> tuple[str, dict[str, Tensor]]:
    """(prefix, state without it) when every key starts with one wrapper name such as ``Scale.``.

    The DeepLab-v2 initialisation files AdaptSegNet and ADVENT publish keep the backbone under one
    outer module (``Scale.conv1.weight`` ...); their loaders drop the first name of every key. A state
    whose first names are our own module names is returned as it is, with prefix "".
    """
    firsts = {k.split(".", 1)[0] for k in state}
    if len(firsts) != 1 or any("." not in k for k in state):
        return "", dict(state)
    (first,) = firsts
    if first in _TOP_MODULES:
        return "", dict(state)
    return first + ".", {k.split(".", 1)[1]: v for k, v in state.items()}


_TOP_MODULES = frozenset({"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "layer5", "layer6", "fc"})


def is_deeplab_state(state: dict[str, Tensor]) -> bool:
    """True when ``state`` (prefix already stripped) holds DeepLab-v2 ResNet-101 backbone tensors."""
    stem = state.get("conv1.weight")
    return (stem is not None and tuple(stem.shape) == (64, 3, 7, 7)
            and "layer3.22.conv3.weight" in state and "layer4.0.downsample.0.weight" in state)


def has_heads(state: dict[str, Tensor]) -> bool:
    """True when ``state`` holds both classifiers of the multi-level net (aux on 1024 channels)."""
    aux = state.get("layer5.conv2d_list.0.weight")
    return "layer6.conv2d_list.0.weight" in state and aux is not None and aux.shape[1] == 1024


def backbone_problem(state: dict[str, Tensor]) -> str | None:
    """Why ``state`` is not a DeepLab-v2 ResNet-101 backbone (missing keys, other shapes); None when it is."""
    expected = backbone_shapes()
    missing = [k for k in expected if k not in state]
    wrong = [k for k, shape in expected.items() if k in state and tuple(state[k].shape) != shape]
    if missing:
        return f"{len(missing)} backbone tensors missing (first: {missing[0]})"
    if wrong:
        return f"{len(wrong)} backbone tensors of another shape (first: {wrong[0]} {list(state[wrong[0]].shape)})"
    return None
