"""Tolerances that scale with what is compared, so that a float comparison holds on any CPU.

Two computations that are equal in exact arithmetic (a folded net and the plain one, an ONNX graph and
PyTorch, channels-last and contiguous, accumulated and whole-batch gradients) differ in float32 by rounding
whose size depends on the kernels the CPU runs (AVX-512, AVX2 or scalar, and the thread count): a constant
picked on one machine can fail on another. The yardsticks here are measured in the test itself
(docs/robustness.md#tests-on-any-cpu).
"""
from __future__ import annotations

import torch
from torch import Tensor

EPS32 = torch.finfo(torch.float32).eps

# Two float32 computations of one net land about equally far from its float64 answer: measured largest
# errors within 0.6-3.3x of each other over AVX-512, AVX2 and scalar kernels with 1 and 2 threads (folded
# nets of every DRN, channels-last, ONNX Runtime), at most 28% of the bound below. A fold that drops batch
# norm's eps is 40-240x off (tried).
AS_ACCURATE = 10.0


def max_error(got: Tensor, exact: Tensor) -> float:
    """The largest absolute difference between `got` and `exact`, computed in float64."""
    return float((got.double() - exact.double()).abs().max())


def relative_error(got: Tensor, want: Tensor) -> float:
    """||got - want|| / ||want|| in float64 (0 when both are zero, inf when only `want` is)."""
    diff, size = float((got.double() - want.double()).norm()), float(want.double().norm())
    return diff / size if size else (0.0 if diff == 0 else float("inf"))


def assert_as_accurate(got: Tensor, ref: Tensor, exact: Tensor, *, factor: float = AS_ACCURATE,
                       what: str = "output") -> None:
    """`got` and `ref` compute in float32 what `exact` computes in float64 (the same net in double): assert
    that `got` lies at most `factor` times as far from `exact` as `ref` does on this machine, plus a few
    float32 epsilons of exact's scale (so that a reference that happens to round well asks nothing impossible).
    """
    assert got.shape == ref.shape == exact.shape, (what, got.shape, ref.shape, exact.shape)
    err_got, err_ref = max_error(got, exact), max_error(ref, exact)
    bound = factor * err_ref + 4 * EPS32 * float(exact.double().abs().max())
    assert err_got <= bound, (f"{what}: {err_got:.2e} from the float64 answer, more than {factor:g}x the "
                              f"float32 reference's {err_ref:.2e} (bound {bound:.2e})")
