"""How often AdaptSegNet's and ADVENT's 1x group lists each backbone parameter, and what that does to SGD steps.

    python -m bench.deeplab_param_groups

Their `get_1x_lr_params_NOscale` walks `module.modules()` of conv1, bn1 and layer1..4 and, for every module,
yields `parameters()` of that module, which recurse: a parameter comes once per ancestor module listed. This
script counts the appearances on our DeepLab-v2 net (the same modules and names), then measures the update of one
parameter listed 1 and 3 times in an SGD group (momentum 0.9, weight decay 5e-4, this torch's loop and foreach
implementations). Our `param_groups` lists every parameter once (docs/differences.md).
"""
from __future__ import annotations

import sys
import warnings
from collections import Counter
from collections.abc import Sequence

import torch

from model import build_seg_model
from model.deeplab import ARCH
from utils.cli import ArgumentParser, run_cli


def their_backbone_listing(net: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The 1x group as their traversal builds it: every trainable parameter under every module of the stem and
    layer1..4, once per module that contains it."""
    listed = []
    for top in (net.conv1, net.bn1, net.layer1, net.layer2, net.layer3, net.layer4):
        for module in top.modules():
            listed += [p for p in module.parameters() if p.requires_grad]
    return listed


def update_ratios(appearances: int, steps: int = 5, foreach: bool = False) -> list[float]:
    """Size of each step's update of a parameter listed `appearances` times, over its update when listed once."""
    moves = {}
    for count in (1, appearances):
        p = torch.nn.Parameter(torch.ones(4))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about duplicates in a group: that is the point here
            opt = torch.optim.SGD([{"params": [p] * count}], lr=0.1, momentum=0.9, weight_decay=5e-4, foreach=foreach)
        moves[count] = []
        for _ in range(steps):
            opt.zero_grad()
            (p * torch.arange(1.0, 5.0)).sum().backward()
            before = p.detach().clone()
            opt.step()
            moves[count].append(float((before - p.detach())[0]))
    return [b / a for a, b in zip(moves[1], moves[appearances])]


def main(argv: Sequence[str] | None = None) -> int:
    """Print the appearance counts and the update ratios."""
    ArgumentParser(prog="python -m bench.deeplab_param_groups", description=__doc__.splitlines()[0]).parse_args(argv)
    net = build_seg_model(ARCH)
    names = {id(p): n for n, p in net.named_parameters()}
    counts = Counter(id(p) for p in their_backbone_listing(net))
    histogram = Counter(counts.values())
    print(f"their 1x group: {sum(counts.values())} entries for {len(counts)} parameters; appearances -> parameters: "
          f"{dict(sorted(histogram.items()))}")
    print("  listed 4 times: " + ", ".join(names[i] for i, c in counts.items() if c == 4))
    ours = [id(p) for p in net.param_groups()[0]["params"]]
    print(f"our 1x group: {len(ours)} entries for {len(set(ours))} parameters")
    for foreach in (False, True):
        ratios = update_ratios(3, foreach=foreach)
        print(f"SGD ({'foreach' if foreach else 'for-loop'}, torch {torch.__version__}): update of a parameter "
              f"listed 3 times / listed once, steps 1..5: {', '.join(f'{r:.2f}' for r in ratios)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
