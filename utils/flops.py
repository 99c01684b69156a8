"""The work of one forward pass, counted once for the model card, the benchmark and the deployment table."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def gflops(net: nn.Module, size: tuple[int, int]) -> float:
    """GFLOPs (2 x multiply-adds, convolutions and matmuls) of one forward pass on a (1, 3, H, W) image.

    Counted on a meta-device copy, so nothing is computed and any size is instant.
    """
    w, h = size
    meta = copy.deepcopy(net).to("meta").eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(torch.empty(1, 3, h, w, device="meta"))
    return counter.get_total_flops() / 1e9
