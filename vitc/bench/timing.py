"""Interleaved timing: candidates measured in one run, round-robin, so drift hits all alike."""

import statistics
import time
from collections.abc import Callable


def interleaved_rates(steps: dict[str, Callable[[], None]], items_per_step: int, warmup: int,
                      iters: int, rounds: int) -> dict[str, float]:
    """Median items/s of each step function over `rounds` round-robin rounds of `iters` calls."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(iters):
                step()
            samples[name].append(items_per_step * iters / (time.perf_counter() - start))
    return {name: statistics.median(rates) for name, rates in samples.items()}
