"""Networks of DAKD: DRN backbones, the multi-level segmentation nets (DRN, DeepLab-v2), discriminator, weight I/O."""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from model.deeplab import DEEPLAB_ARCHS, DeepLabV2
from model.discriminator import Discriminator
from model.drn import ARCHS, MODEL_URLS, build_drn, zero_init_residual
from model.fold import fold_batchnorm
from model.pretrained import INIT_NAMES, INITS, published_archs
from model.pretrained import fetch as fetch_pretrained
from model.registry import SEG_ARCHS, build_net, is_seg_net, param_groups, resolve_aux_layer
from model.seg_net import AUX, DEFAULT_AUX_LAYER, MAIN, SegNet
from utils.errors import ConfigError

# model.weights is imported on first use (module __getattr__ below), so that `python -m model.weights`
# runs that module once, as __main__, and not a second, already imported copy of it.
_FROM_WEIGHTS = ("LoadReport", "build_from_checkpoint", "load_weights", "read_checkpoint", "save_final")

__all__ = [
    "ARCHS", "AUX", "DEEPLAB_ARCHS", "DEFAULT_AUX_LAYER", "INITS", "MAIN", "MODEL_URLS", "SEG_ARCHS", "DeepLabV2",
    "Discriminator", "LoadReport", "SegNet", "build_drn", "build_from_checkpoint", "build_net", "build_seg_model",
    "count_parameters", "fold_batchnorm", "fetch_pretrained", "is_seg_net", "load_weights", "param_groups",
    "published_archs", "read_checkpoint", "resolve_aux_layer", "save_final", "zero_init_residual",
]


def __getattr__(name: str) -> Any:
    """The weight I/O functions of ``model.weights``, imported when first asked for."""
    if name in _FROM_WEIGHTS:
        return getattr(importlib.import_module("model.weights"), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")


def build_seg_model(arch: str = "drn_d_22", num_classes: int = 19, aux_layer: int | None = None,
                    pretrained: str | None = None, *, allow_pickle: bool = False,
                    zero_residual: bool = False) -> nn.Module:
    """The segmentation net ``arch`` (a DRN SegNet or a DeepLab-v2 net, ``SEG_ARCHS``), initialised.

    ``pretrained`` is None, a path/URL, or the name of a published initialisation (``INITS``):
    "imagenet" (the DRN authors' weights; for DeepLab-v2 the ImageNet file ADVENT publishes) or
    "coco" (DeepLab-v2 only: the ImageNet + MS-COCO file AdaptSegNet trains from). A name takes the
    first verified file of its chain of sources (``model.pretrained``): from the cache, else downloaded;
    a CheckpointError names every source tried when none works.

    ``aux_layer`` defaults to ``DEFAULT_AUX_LAYER[arch]`` (6 for drn_d_22, 7 for drn_d_38); DeepLab-v2's
    aux head is always on layer3. ``zero_residual`` starts every residual block of a DRN as the
    identity (``model.drn.zero_init_residual``), before any pretrained weights are loaded over it.
    """
    net = build_net(arch, num_classes=num_classes, aux_layer=aux_layer)
    if zero_residual:
        if not isinstance(net, SegNet):
            raise ConfigError(f"--zero-init-residual: {arch} keeps its batch-norm scales frozen (as AdaptSegNet "
                              "trains it), so zeroing them would switch every residual branch off for good")
        zero_init_residual(net.base)
    if pretrained in INITS:
        if arch not in published_archs(pretrained):
            raise ConfigError(f"no published {INIT_NAMES[pretrained]} weights for {arch}; those exist for "
                              f"{', '.join(published_archs(pretrained))} (or pass a file)")
        pretrained, _ = fetch_pretrained(arch, init=pretrained)
    if pretrained:
        from model.weights import load_weights

        load_weights(net, pretrained, allow_pickle=allow_pickle)
    return net


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``module`` (only those requiring grad if ``trainable_only``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
