"""CPU wall-clock timing shared by the benchmark modules (GPU timings use triton.testing.do_bench or CUDA
events). Callers choose the statistic: the minimum is the stable estimate on a shared machine, where other
processes only ever add time; the median shows the typical run."""
from __future__ import annotations

import time
from typing import Callable, List


def wall_times(fn: Callable[[], object], repeats: int, warmup: int = 1) -> List[float]:
    """Seconds per call of `fn`, `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times
