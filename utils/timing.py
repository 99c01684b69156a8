"""Wall-clock timing: the one timer of the benchmark, the model card and the deployment table."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of `repeats` calls of `fn` after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median milliseconds of `repeats` calls of `fn` after `warmup` untimed ones."""
    return 1000.0 * statistics.median(timed(fn, repeats, warmup))
