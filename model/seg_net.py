"""The multi-level segmentation net: a DRN backbone with a main head (level 8) and an auxiliary head."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.drn import ARCHS, build_drn
from utils.errors import ConfigError

AUX, MAIN = 0, 1  # positions in the (aux, main) pair that the segmentation nets return

DEFAULT_AUX_LAYER: dict[str, int] = {
    # The original code tapped level 6 for the DRN-D-22 student and level 7 for the DRN-D-38 teacher.
    # The other small nets follow the student (level 6); the larger ones follow the teacher
    # (level 7), which for the bottleneck nets is also the first 512-channel level after the
    # 2048-channel ones, so the aux head stays as small as the main head.
    "drn_c_26": 6,
    "drn_d_22": 6,
    "drn_d_24": 6,
    "drn_c_42": 7,
    "drn_c_58": 7,
    "drn_d_38": 7,
    "drn_d_40": 7,
    "drn_d_54": 7,
    "drn_d_56": 7,
    "drn_d_105": 7,
    "drn_d_107": 7,
}


def _head(in_ch: int, num_classes: int) -> nn.Conv2d:
    """A 1x1 classifier initialised as in DRN's segmentation code: N(0, sqrt(2 / num_classes)), bias 0."""
    head = nn.Conv2d(in_ch, num_classes, 1, bias=True)
    nn.init.normal_(head.weight, 0.0, math.sqrt(2.0 / num_classes))
    nn.init.zeros_(head.bias)
    return head


class TwoHeads:
    """`main_head` and `aux_head` of a two-level net whose heads keep the names its published checkpoints use
    (the class says which: `MAIN_HEAD`, `AUX_HEAD`)."""

    MAIN_HEAD: str
    AUX_HEAD: str
    __jit_unused_properties__ = ["main_head", "aux_head"]  # TorchScript cannot call a module a property returns

    @property
    def main_head(self) -> nn.Module:
        """The main classifier, on the last level."""
        return getattr(self, self.MAIN_HEAD)

    @property
    def aux_head(self) -> nn.Module:
        """The auxiliary classifier, on an intermediate level."""
        return getattr(self, self.AUX_HEAD)


class SegNet(TwoHeads, nn.Module):
    """DRN backbone ``base`` + main head (level 8) + aux head (level ``aux_layer``).

    The heads are the modules ``seg1`` (main) and ``seg2`` (aux), the names the original code's checkpoints
    use; the code calls them ``main_head`` and ``aux_head``.

    ``forward`` returns ``(aux, main)`` log-probabilities of shape (N, num_classes, H, W), each
    head's logits upsampled bilinearly (align_corners=True) to the input's size or ``output_size``.
    """

    def __init__(self, arch: str = "drn_d_22", num_classes: int = 19, aux_layer: Optional[int] = None) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ConfigError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        aux_layer = DEFAULT_AUX_LAYER[arch] if aux_layer is None else int(aux_layer)
        if not 1 <= aux_layer <= 8:
            raise ConfigError(f"aux_layer must be a DRN level 1..8, got {aux_layer}")
        self.arch = arch
        self.num_classes = num_classes
        self.aux_layer = aux_layer
        self.base = build_drn(arch)
        self.seg1 = _head(self.base.out_dim, num_classes)
        self.seg2 = _head(self.base.level_channels[aux_layer - 1], num_classes)

    MAIN_HEAD, AUX_HEAD = "seg1", "seg2"

    def forward(self, x: Tensor, output_size: Optional[tuple[int, int]] = None) -> tuple[Tensor, Tensor]:
        """``(aux, main)`` log-probabilities at ``output_size`` (H, W), by default the input's size."""
        feats = self.base.forward_levels(x, [self.aux_layer])
        if output_size is None:
            size = [x.shape[2], x.shape[3]]
        else:
            size = [output_size[0], output_size[1]]
        # the heads by their state-dict names here, so that TorchScript can compile forward: seg2 is the aux head
        aux = upsample_log_probs(self.seg2(feats[self.aux_layer]), size)
        main = upsample_log_probs(self.seg1(feats[8]), size)
        return aux, main

    def main_logits(self, x: Tensor, output_size: Optional[tuple[int, int]] = None) -> Tensor:
        """Main-head logits at ``output_size`` (H, W), for inference: no aux head, no log-softmax.

        Their arg-max equals the arg-max of ``forward(x)[MAIN]``, and their softmax its exp.
        """
        size = [x.shape[2], x.shape[3]] if output_size is None else [output_size[0], output_size[1]]
        logits = self.seg1(self.base(x))  # the main head
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)

    def param_groups(self) -> list[dict]:
        """Every parameter in one optimiser group at the base learning rate, as the original code trained it."""
        return [{"params": list(self.parameters()), "lr_mult": 1.0}]

    def extra_repr(self) -> str:
        return f"arch={self.arch}, num_classes={self.num_classes}, aux_layer={self.aux_layer}"


def upsample_log_probs(logits: Tensor, size: list[int]) -> Tensor:
    """Log-softmax over classes of ``logits`` upsampled bilinearly (align_corners=True) to ``size`` (H, W)."""
    # Interpolating to an explicit size (not a x8 factor) gives exactly the input's size for
    # every input, including sizes that are not multiples of 8.
    up = F.interpolate(logits, size=size, mode="bilinear", align_corners=True)
    if up.dtype == torch.float16 or up.dtype == torch.bfloat16:
        # Losses on half-precision log-probabilities lose too much; CPU autocast keeps
        # log_softmax in the low precision, so the last step runs in float32 on every device.
        up = up.float()
    return F.log_softmax(up, dim=1)
