"""Is A better than B? Paired per-seed differences, their mean, spread and a Student-t interval of the mean.

Two rows trained with the same seed share their data order and start (and any quirk of the machine), so
their difference varies less than either score: the unit of evidence is the per-seed difference
`a[i] - b[i]`, and a claim "A beats B" holds at this scale when the whole interval of the mean difference
lies above zero.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

LEVEL = 0.95
METHOD = "two-sided Student-t interval of the mean paired difference, n - 1 degrees of freedom"


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t distribution with `df` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(p, df))


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> dict:
    """The differences a[i] - b[i], their mean, sample standard deviation and the Student-t `level` interval of
    the mean (std and interval are None for a single pair)."""
    if len(a) != len(b):
        raise ValueError(f"paired scores need one value per seed on both sides (got {len(a)} and {len(b)})")
    if not a:
        raise ValueError("paired scores: no seed to compare")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    diffs = [x - y for x, y in zip(a, b)]
    n = len(diffs)
    mean = statistics.fmean(diffs)
    result = {"differences": diffs, "n": n, "mean": mean, "std": None, "interval": None, "level": level,
              "method": METHOD}
    if n > 1:
        std = statistics.stdev(diffs)
        half = t_quantile(0.5 + level / 2, n - 1) * std / math.sqrt(n)
        result.update(std=std, interval=[mean - half, mean + half])
    return result


def verdict(stats: dict) -> str:
    """'holds' when the interval lies above zero, 'reversed' when below, 'undecided' when it holds zero;
    'one seed' when there is no interval."""
    if stats["interval"] is None:
        return "one seed"
    low, high = stats["interval"]
    if low > 0:
        return "holds"
    if high < 0:
        return "reversed"
    return "undecided"
