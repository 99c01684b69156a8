"""Batch-norm folding: an inference copy of a net whose convolutions absorb the batch norms after them."""
from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# Attribute pairs of the DRN blocks (model.drn.BasicBlock / Bottleneck): bnN normalises convN's output.
_BLOCK_PAIRS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))


def _foldable(conv: object, bn: object) -> bool:
    return (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats
            and conv.out_channels == bn.num_features)


def _fold_children(module: nn.Module) -> None:
    for child in module.children():
        _fold_children(child)
    if isinstance(module, nn.Sequential):
        for i in range(len(module) - 1):
            if _foldable(module[i], module[i + 1]):
                module[i] = fuse_conv_bn_eval(module[i], module[i + 1])
                module[i + 1] = nn.Identity()
    for conv_name, bn_name in _BLOCK_PAIRS:
        conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
        if _foldable(conv, bn):
            setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
            setattr(module, bn_name, nn.Identity())


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """An eval-mode copy of `net` in which every batch norm that follows a convolution is folded into it.

    Each such pair becomes one convolution with a bias (the batch norm an `nn.Identity`), so inference
    does one pass over the feature map instead of two. The outputs equal the original's in eval mode up
    to float rounding; `net` itself is left untouched. For inference only: the folded copy has no
    batch-norm statistics left to train.
    """
    folded = copy.deepcopy(net).eval()
    _fold_children(folded)
    return folded
