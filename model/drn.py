"""Dilated Residual Networks (Yu, Koltun, Funkhouser 2017): the C and D families used as backbones.

Parameter and buffer names follow the published DRN ImageNet checkpoints (``layer0.0.weight``,
``layer3.0.conv1.weight``, ``layer3.0.downsample.0.weight``, ``fc.weight`` ...), so those files load
into a backbone built here with nothing but ``fc.*`` left over.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

from torch import Tensor, nn

CHANNELS = (16, 32, 64, 128, 256, 512, 512, 512)
"""Width of each level 1..8 (before a bottleneck's expansion); output stride of level 8 is 8."""

LEVELS = tuple(range(1, 9))

_WEBROOT = "http://dl.yf.io/drn/"
MODEL_URLS: dict[str, str] = {
    "drn_c_26": _WEBROOT + "drn_c_26-ddedf421.pth",
    "drn_c_42": _WEBROOT + "drn_c_42-9d336e8c.pth",
    "drn_c_58": _WEBROOT + "drn_c_58-0a53a92c.pth",
    "drn_d_22": _WEBROOT + "drn_d_22-4bd2f8ea.pth",
    "drn_d_38": _WEBROOT + "drn_d_38-eebb45f0.pth",
    "drn_d_54": _WEBROOT + "drn_d_54-0e0534ff.pth",
    "drn_d_105": _WEBROOT + "drn_d_105-12b40979.pth",
}
"""ImageNet checkpoints published by the DRN authors; D-24, D-40, D-56 and D-107 have none."""


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    # padding = dilation keeps the spatial size for stride 1
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm; residual unless ``residual=False`` (arch C levels 7-8)."""

    expansion = 1

    def __init__(self, in_ch: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 dilation: tuple[int, int] = (1, 1), residual: bool = True) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, planes, stride, dilation[0])
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation[1])
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        """Block output at the block's stride."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            shortcut = x if self.downsample is None else self.downsample(x)
            out = out + shortcut
        # A non-residual block may still own a `downsample` (C-58, level 7: 2048 -> 512 channels): the
        # published checkpoints contain it, so it is kept for loading but does not change the output.
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided / dilated), 1x1 expand (x4), with a residual connection.

    ``stride_in_1x1``: the stride in the first 1x1 convolution instead, as Caffe's ResNet (DeepLab-v2) has it.
    """

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 dilation: tuple[int, int] = (1, 1), residual: bool = True, stride_in_1x1: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, planes, 1, stride=stride if stride_in_1x1 else 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        # The only 3x3 conv of the block carries the level's dilation (the second entry of the pair).
        self.conv2 = _conv3x3(planes, planes, 1 if stride_in_1x1 else stride, dilation[1])
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """Block output at the block's stride."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class ArchSpec(NamedTuple):
    """How one named DRN variant is built."""

    block: type
    layers: tuple[int, int, int, int, int, int, int, int]
    arch: str  # "C" or "D"


ARCH_SPECS: dict[str, ArchSpec] = {
    "drn_c_26": ArchSpec(BasicBlock, (1, 1, 2, 2, 2, 2, 1, 1), "C"),
    "drn_c_42": ArchSpec(BasicBlock, (1, 1, 3, 4, 6, 3, 1, 1), "C"),
    "drn_c_58": ArchSpec(Bottleneck, (1, 1, 3, 4, 6, 3, 1, 1), "C"),
    "drn_d_22": ArchSpec(BasicBlock, (1, 1, 2, 2, 2, 2, 1, 1), "D"),
    "drn_d_24": ArchSpec(BasicBlock, (1, 1, 2, 2, 2, 2, 2, 2), "D"),
    "drn_d_38": ArchSpec(BasicBlock, (1, 1, 3, 4, 6, 3, 1, 1), "D"),
    "drn_d_40": ArchSpec(BasicBlock, (1, 1, 3, 4, 6, 3, 2, 2), "D"),
    "drn_d_54": ArchSpec(Bottleneck, (1, 1, 3, 4, 6, 3, 1, 1), "D"),
    "drn_d_56": ArchSpec(Bottleneck, (1, 1, 3, 4, 6, 3, 2, 2), "D"),
    "drn_d_105": ArchSpec(Bottleneck, (1, 1, 3, 4, 23, 3, 1, 1), "D"),
    "drn_d_107": ArchSpec(Bottleneck, (1, 1, 3, 4, 23, 3, 2, 2), "D"),
}
ARCHS = tuple(ARCH_SPECS)


class DRN(nn.Module):
    """A DRN backbone (output stride 8); with ``num_classes > 0`` also the ImageNet classifier ``fc``.

    ``forward_levels(x, levels)`` gives the outputs of the requested levels 1..8;
    ``forward(x)`` gives level 8, or class logits (N, num_classes) when the classifier exists.
    """

    def __init__(self, block: type, layers: tuple[int, ...], arch: str = "D", num_classes: int = 0) -> None:
        super().__init__()
        if arch not in ("C", "D") or len(layers) != 8 or min(layers) < 1:
            raise ValueError(f"DRN needs arch 'C' or 'D' and eight block counts >= 1, got {arch}, {layers}")
        self.arch = arch
        self.inplanes = CHANNELS[0]
        self.out_dim = CHANNELS[7]
        exp = block.expansion
        if arch == "C":
            self.conv1 = nn.Conv2d(3, CHANNELS[0], 7, stride=1, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(CHANNELS[0])
            self.relu = nn.ReLU(inplace=True)
            self.layer0 = None
            self.layer1 = self._blocks(BasicBlock, CHANNELS[0], layers[0])
            self.layer2 = self._blocks(BasicBlock, CHANNELS[1], layers[1], stride=2)
        else:
            self.conv1 = None
            self.bn1 = None
            self.relu = nn.ReLU(inplace=True)  # unused by arch D; keeps `_stem` scriptable
            self.layer0 = nn.Sequential(
                nn.Conv2d(3, CHANNELS[0], 7, stride=1, padding=3, bias=False),
                nn.BatchNorm2d(CHANNELS[0]),
                nn.ReLU(inplace=True),
            )
            self.layer1 = self._convs(CHANNELS[0], layers[0])
            self.layer2 = self._convs(CHANNELS[1], layers[1], stride=2)
        self.layer3 = self._blocks(block, CHANNELS[2], layers[2], stride=2)
        self.layer4 = self._blocks(block, CHANNELS[3], layers[3], stride=2)
        # Levels 5 and 6 are dilated instead of strided; not a "new level", so every conv uses d.
        self.layer5 = self._blocks(block, CHANNELS[4], layers[4], dilation=2, new_level=False)
        self.layer6 = self._blocks(block, CHANNELS[5], layers[5], dilation=4, new_level=False)
        if arch == "C":
            self.layer7 = self._blocks(BasicBlock, CHANNELS[6], layers[6], dilation=2,
                                       new_level=False, residual=False)
            self.layer8 = self._blocks(BasicBlock, CHANNELS[7], layers[7], dilation=1,
                                       new_level=False, residual=False)
        else:
            self.layer7 = self._convs(CHANNELS[6], layers[6], dilation=2)
            self.layer8 = self._convs(CHANNELS[7], layers[7], dilation=1)
        self.level_channels = (CHANNELS[0], CHANNELS[1], *(c * exp for c in CHANNELS[2:6]),
                               CHANNELS[6], CHANNELS[7])
        self.num_classes = num_classes
        if num_classes > 0:
            # The published models average-pool a 28x28 map (224 input); adaptive pooling is the
            # same there and also works at other sizes. The classifier is a 1x1 conv, as published.
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Conv2d(self.out_dim, num_classes, 1, bias=True)
        else:
            self.avgpool = None
            self.fc = None
        self._init_weights()

    def _blocks(self, block: type, planes: int, count: int, stride: int = 1, dilation: int = 1,
                new_level: bool = True, residual: bool = True) -> nn.Sequential:
        """A level of residual blocks; the first may downsample / change width."""
        out_ch = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_ch:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, out_ch, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(out_ch))
        first_dilation = (1, 1) if dilation == 1 else (dilation // 2 if new_level else dilation, dilation)
        blocks = [block(self.inplanes, planes, stride, downsample, dilation=first_dilation, residual=residual)]
        self.inplanes = out_ch
        blocks += [block(out_ch, planes, dilation=(dilation, dilation), residual=residual)
                   for _ in range(1, count)]
        return nn.Sequential(*blocks)

    def _convs(self, channels: int, count: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        """A level of plain conv3x3-BN-ReLU layers (arch D levels 1, 2, 7, 8)."""
        modules: list[nn.Module] = []
        for i in range(count):
            modules += [_conv3x3(self.inplanes, channels, stride if i == 0 else 1, dilation),
                        nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
            self.inplanes = channels
        return nn.Sequential(*modules)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _stem(self, x: Tensor) -> Tensor:
        # Arch D owns `layer0`, arch C `conv1`/`bn1`; the other is None (no state-dict entries).
        if self.layer0 is not None:
            x = self.layer0(x)
        elif self.conv1 is not None and self.bn1 is not None:
            x = self.relu(self.bn1(self.conv1(x)))
        return x

    def forward_levels(self, x: Tensor, levels: list[int]) -> dict[int, Tensor]:
        """Outputs of the requested levels (1..8), keyed by level; always runs up to level 8."""
        out: dict[int, Tensor] = {}
        # Written out level by level (not a loop over getattr) so that torch.jit.script accepts it.
        x = self.layer1(self._stem(x))
        if 1 in levels:
            out[1] = x
        x = self.layer2(x)
        if 2 in levels:
            out[2] = x
        x = self.layer3(x)
        if 3 in levels:
            out[3] = x
        x = self.layer4(x)
        if 4 in levels:
            out[4] = x
        x = self.layer5(x)
        if 5 in levels:
            out[5] = x
        x = self.layer6(x)
        if 6 in levels:
            out[6] = x
        x = self.layer7(x)
        if 7 in levels:
            out[7] = x
        x = self.layer8(x)
        out[8] = x
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Level-8 features (N, 512, H/8, W/8), or ImageNet logits (N, num_classes) with a classifier."""
        x = self.forward_levels(x, [8])[8]
        if self.fc is not None and self.avgpool is not None:
            x = self.fc(self.avgpool(x)).flatten(1)
        return x


def zero_init_residual(net: nn.Module) -> int:
    """Set the last batch-norm scale of every residual block in ``net`` to zero; return how many.

    Each block then starts as the identity, so a deep net trained from scratch behaves like a
    shallow one at first (Goyal et al. 2017, "Accurate, Large Minibatch SGD"). A from-scratch
    option only: published or restored weights overwrite it.
    """
    count = 0
    for m in net.modules():
        if isinstance(m, BasicBlock) and m.residual:
            nn.init.zeros_(m.bn2.weight)
            count += 1
        elif isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)
            count += 1
    return count


def build_drn(name: str, num_classes: int = 0) -> DRN:
    """The DRN variant called ``name`` (one of ``ARCHS``); ``num_classes > 0`` adds the classifier."""
    if name not in ARCH_SPECS:
        raise ValueError(f"unknown DRN architecture {name!r}; choose one of {', '.join(ARCHS)}")
    spec = ARCH_SPECS[name]
    return DRN(spec.block, spec.layers, spec.arch, num_classes=num_classes)


def drn_c_26(num_classes: int = 0) -> DRN:
    """DRN-C-26 (BasicBlock, residual stem levels)."""
    return build_drn("drn_c_26", num_classes)


def drn_c_42(num_classes: int = 0) -> DRN:
    """DRN-C-42 (BasicBlock)."""
    return build_drn("drn_c_42", num_classes)


def drn_c_58(num_classes: int = 0) -> DRN:
    """DRN-C-58 (Bottleneck)."""
    return build_drn("drn_c_58", num_classes)


def drn_d_22(num_classes: int = 0) -> DRN:
    """DRN-D-22 (BasicBlock): the DAKD student's backbone."""
    return build_drn("drn_d_22", num_classes)


def drn_d_24(num_classes: int = 0) -> DRN:
    """DRN-D-24 (BasicBlock, two conv layers at levels 7 and 8)."""
    return build_drn("drn_d_24", num_classes)


def drn_d_38(num_classes: int = 0) -> DRN:
    """DRN-D-38 (BasicBlock): the DAKD teacher's backbone."""
    return build_drn("drn_d_38", num_classes)


def drn_d_40(num_classes: int = 0) -> DRN:
    """DRN-D-40 (BasicBlock, two conv layers at levels 7 and 8)."""
    return build_drn("drn_d_40", num_classes)


def drn_d_54(num_classes: int = 0) -> DRN:
    """DRN-D-54 (Bottleneck)."""
    return build_drn("drn_d_54", num_classes)


def drn_d_56(num_classes: int = 0) -> DRN:
    """DRN-D-56 (Bottleneck, two conv layers at levels 7 and 8)."""
    return build_drn("drn_d_56", num_classes)


def drn_d_105(num_classes: int = 0) -> DRN:
    """DRN-D-105 (Bottleneck)."""
    return build_drn("drn_d_105", num_classes)


def drn_d_107(num_classes: int = 0) -> DRN:
    """DRN-D-107 (Bottleneck, two conv layers at levels 7 and 8)."""
    return build_drn("drn_d_107", num_classes)

