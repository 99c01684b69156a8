"""Every segmentation architecture by name: the DRN SegNets and the DeepLab-v2 nets, built alike."""
from __future__ import annotations

from typing import Optional

from torch import nn

from model import deeplab
from model.deeplab import DEEPLAB_ARCHS, DeepLabV2
from model.drn import ARCHS as DRN_ARCHS
from model.seg_net import DEFAULT_AUX_LAYER, SegNet
from utils.errors import ConfigError

SEG_ARCHS: tuple[str, ...] = (*DRN_ARCHS, *DEEPLAB_ARCHS)
"""Every architecture ``build_net`` (and ``--arch``) accepts."""
SEG_NETS: tuple[type, ...] = (SegNet, DeepLabV2)


def is_seg_net(net: object) -> bool:
    """True for a segmentation net of ours (``(aux, main)`` output, ``arch``/``aux_layer``/``num_classes``)."""
    return isinstance(net, SEG_NETS)


def build_net(arch: str, num_classes: int = 19, aux_layer: Optional[int] = None) -> nn.Module:
    """The untrained segmentation net called ``arch`` (one of ``SEG_ARCHS``)."""
    if arch in DEEPLAB_ARCHS:
        return DeepLabV2(arch, num_classes=num_classes, aux_layer=aux_layer)
    if arch in DRN_ARCHS:
        return SegNet(arch, num_classes=num_classes, aux_layer=aux_layer)
    raise ConfigError(f"unknown architecture {arch!r}; choose one of {', '.join(SEG_ARCHS)}")


def resolve_aux_layer(arch: str, aux_layer: Optional[int]) -> Optional[int]:
    """The aux tap a net of ``arch`` gets when ``aux_layer`` is asked for (None: the architecture's default)."""
    if arch in DEEPLAB_ARCHS:
        return deeplab.resolve_aux_layer(aux_layer)
    return DEFAULT_AUX_LAYER.get(arch) if aux_layer is None else aux_layer


def param_groups(net: nn.Module) -> list[dict]:
    """The net's trainable parameters in optimiser groups, each with an ``lr_mult`` on the base rate.

    A DRN SegNet is one group at 1x; DeepLab-v2 puts its classifiers at 10x. A wrapped net
    (DataParallel / DistributedDataParallel) gives its module's groups: the same parameter objects.
    """
    core = net.module if isinstance(net, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else net
    if hasattr(core, "param_groups"):
        return core.param_groups()
    return [{"params": [p for p in core.parameters() if p.requires_grad], "lr_mult": 1.0}]
