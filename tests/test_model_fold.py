"""Batch-norm folding: no batch norm left, the same outputs in eval mode, the original untouched."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from model import ARCHS, build_seg_model, fold_batchnorm
from model.drn import build_drn
from tests.tolerances import assert_as_accurate


def randomise_batchnorm(net: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm statistics and an affine far from the identity, so folding has work to do."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return net.eval()


def count(net: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in net.modules())


# The folded net computes in float32 what the plain one does: it must be about as accurate, judged against
# the plain net in float64 (tests/tolerances.py), whatever the CPU's kernels.
@pytest.mark.float_sensitive
def test_student_folds_every_batch_norm_and_keeps_its_outputs():
    torch.manual_seed(0)
    net = randomise_batchnorm(build_seg_model("drn_d_22"))
    folded = fold_batchnorm(net)
    assert count(net, nn.BatchNorm2d) == 25 and count(folded, nn.BatchNorm2d) == 0
    assert not folded.training
    x = torch.randn(2, 3, 32, 48)
    exact = copy.deepcopy(net).double()
    with torch.no_grad():
        aux, main = net(x)
        faux, fmain = folded(x)
        logits, flogits = net.main_logits(x, (64, 96)), folded.main_logits(x, (64, 96))
        eaux, emain = exact(x.double())
        elogits = exact.main_logits(x.double(), (64, 96))
    for name, ours, theirs, truth in (("aux", faux, aux, eaux), ("main", fmain, main, emain),
                                      ("logits", flogits, logits, elogits)):
        assert_as_accurate(ours, theirs, truth, what=name)
    assert (flogits.argmax(1) == logits.argmax(1)).float().mean() > 0.999


def test_the_original_net_is_left_untouched():
    torch.manual_seed(0)
    net = randomise_batchnorm(build_seg_model("drn_d_22"))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fold_batchnorm(net)
    after = net.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.float_sensitive
@pytest.mark.parametrize("arch", ARCHS)
def test_every_backbone_folds_completely(arch):
    torch.manual_seed(0)
    net = randomise_batchnorm(build_drn(arch))
    folded = fold_batchnorm(net)
    assert count(folded, nn.BatchNorm2d) == 0
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():  # outputs reach 1e3 (D-105): an absolute tolerance would mean little
        assert_as_accurate(folded(x), net(x), copy.deepcopy(net).double()(x.double()), what=arch)


def test_a_batch_norm_without_a_convolution_before_it_stays():
    net = randomise_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)))
    folded = fold_batchnorm(net)
    assert count(folded, nn.BatchNorm2d) == 1
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(folded(x), net(x))
