"""Networks of DAKD: DRN backbones, the multi-level segmentation net, the discriminator, weight I/O."""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from model.discriminator import Discriminator
from model.drn import ARCHS, MODEL_URLS, build_drn, zero_init_residual
from model.fold import fold_batchnorm
from model.pretrained import fetch as fetch_imagenet
from model.pretrained import published_archs
from model.seg_net import AUX, DEFAULT_AUX_LAYER, MAIN, SegNet
from utils.errors import ConfigError

PUBLISHED = tuple(published_archs())

# model.weights is imported on first use (module __getattr__ below), so that `python -m model.weights`
# runs that module once, as __main__, and not a second, already imported copy of it.
_FROM_WEIGHTS = ("LoadReport", "build_from_checkpoint", "load_weights", "read_checkpoint", "save_final")

__all__ = [
    "ARCHS", "AUX", "DEFAULT_AUX_LAYER", "MAIN", "MODEL_URLS", "Discriminator", "LoadReport", "SegNet", "build_drn",
    "build_from_checkpoint", "build_seg_model", "count_parameters", "fold_batchnorm", "load_weights",
    "read_checkpoint", "save_final", "zero_init_residual",
]


def __getattr__(name: str) -> Any:
    """The weight I/O functions of ``model.weights``, imported when first asked for."""
    if name in _FROM_WEIGHTS:
        return getattr(importlib.import_module("model.weights"), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")


def build_seg_model(arch: str = "drn_d_22", num_classes: int = 19, aux_layer: int | None = None,
                    pretrained: str | None = None, *, allow_pickle: bool = False,
                    zero_residual: bool = False) -> SegNet:
    """A SegNet for ``arch``; ``pretrained`` is None, "imagenet" (the published DRN weights) or a path/URL.

    "imagenet" takes the first verified file of the chain of sources (``model.pretrained``): from the
    cache, else downloaded; a CheckpointError names every source tried when none works.

    ``aux_layer`` defaults to ``DEFAULT_AUX_LAYER[arch]`` (6 for drn_d_22, 7 for drn_d_38).
    ``zero_residual`` starts every residual block as the identity (``model.drn.zero_init_residual``),
    before any pretrained weights are loaded over it.
    """
    net = SegNet(arch, num_classes=num_classes, aux_layer=aux_layer)
    if zero_residual:
        zero_init_residual(net.base)
    if pretrained == "imagenet":
        if arch not in PUBLISHED:
            raise ConfigError(f"no published ImageNet weights for {arch}; those exist for "
                              f"{', '.join(PUBLISHED)} (or pass a file)")
        pretrained, _ = fetch_imagenet(arch)
    if pretrained:
        from model.weights import load_weights

        load_weights(net, pretrained, allow_pickle=allow_pickle)
    return net


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements of ``module`` (only those requiring grad if ``trainable_only``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
