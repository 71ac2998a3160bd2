"""The percentile the benchmarks print: the sample at rank p (no interpolation), so a p99 is
a latency some event really had."""

from __future__ import annotations


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(len(ordered) * p), len(ordered) - 1)]
