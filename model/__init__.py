"""Networks of DAKD: DRN backbones, the multi-level segmentation net, the discriminator, weight I/O."""

from __future__ import annotations

from torch import nn

from model.discriminator import Discriminator
from model.drn import ARCHS, MODEL_URLS, build_drn, zero_init_residual
from model.fold import fold_batchnorm
from model.seg_net import DEFAULT_AUX_LAYER, SegNet
from model.weights import LoadReport, build_from_checkpoint, load_weights, read_checkpoint, save_final
from utils.errors import ConfigError

__all__ = [
    "ARCHS", "DEFAULT_AUX_LAYER", "MODEL_URLS", "Discriminator", "LoadReport", "SegNet", "build_drn",
    "build_from_checkpoint", "build_seg_model", "count_parameters", "fold_batchnorm", "load_weights",
    "read_checkpoint", "save_final", "zero_init_residual",
]


def build_seg_model(arch: str = "drn_d_22", num_classes: int = 19, aux_layer: int | None = None,
                    pretrained: str | None = None, *, allow_pickle: bool = False,
                    zero_residual: bool = False) -> SegNet:
    """A SegNet for ``arch``; ``pretrained`` is None, "imagenet" (the published DRN weights) or a path/URL.

    ``aux_layer`` defaults to ``DEFAULT_AUX_LAYER[arch]`` (6 for drn_d_22, 7 for drn_d_38).
    ``zero_residual`` starts every residual block as the identity (``model.drn.zero_init_residual``),
    before any pretrained weights are loaded over it.
    """
    net = SegNet(arch, num_classes=num_classes, aux_layer=aux_layer)
    if zero_residual:
        zero_init_residual(net.base)
    if pretrained == "imagenet":
        if arch not in MODEL_URLS:
            raise ConfigError(f"no published ImageNet weights for {arch}; those exist for "
                              f"{', '.join(MODEL_URLS)} (or pass a file)")
        pretrained = MODEL_URLS[arch]
    if pretrained:
        load_weights(net, pretrained, allow_pickle=allow_pickle)
    return net


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``module`` (only those requiring grad if ``trainable_only``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
