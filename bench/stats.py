"""Latency histograms from the workers (value in µs, rounded to 3 significant digits -> count),
merged here; percentiles by nearest rank."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

Histogram = dict[int, int]


def merge(histograms: Iterable[Mapping[str, int] | Mapping[int, int]]) -> Histogram:
    merged: Histogram = {}
    for histogram in histograms:
        for key, count in histogram.items():
            value = int(float(key))
            merged[value] = merged.get(value, 0) + int(count)
    return merged


def count(histogram: Mapping[int, int]) -> int:
    return sum(histogram.values())


def percentile(histogram: Mapping[int, int], q: float) -> float | None:
    """The q-th percentile (0..100) in µs, or None for an empty histogram."""
    total = count(histogram)
    if total == 0:
        return None
    rank = max(1, -(-q * total // 100))  # ceil(q/100 * total), at least the first
    seen = 0
    for value in sorted(histogram):
        seen += histogram[value]
        if seen >= rank:
            return float(value)
    return float(max(histogram))


def summary_ms(histogram: Mapping[int, int]) -> dict[str, float | int | None]:
    """count, p50, p90, p99, max in milliseconds."""

    def ms(q: float) -> float | None:
        value = percentile(histogram, q)
        return None if value is None else round(value / 1000, 3)

    return {
        "count": count(histogram),
        "p50": ms(50),
        "p90": ms(90),
        "p99": ms(99),
        "max": ms(100),
    }
