"""observe_many must leave a histogram exactly as one observe() per value would."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Histogram

from consumers.telemetry.metrics import observe_many


def _samples(histogram: Histogram) -> dict[tuple[str, str], float]:
    return {
        (sample.name, sample.labels.get("le", "")): sample.value
        for metric in histogram.collect()
        for sample in metric.samples
        if not sample.name.endswith("_created")
    }


def test_observe_many_matches_observe_one_by_one() -> None:
    buckets = (0.005, 0.01, 0.5, 1, 60)
    one = Histogram("one", "one by one", buckets=buckets, registry=CollectorRegistry())
    many = Histogram("many", "at once", buckets=buckets, registry=CollectorRegistry())
    # On a bound, between bounds, under the first, past the last, zero, negative, NaN.
    amounts = [0.005, 0.007, 0.01, 0.0, 1.0, 0.75, 61.0, 1e9, -1.0, 0.5, 0.5000001, math.nan]
    for amount in amounts:
        one.observe(amount)
    observe_many(many, amounts)
    observe_many(many, [])
    got = {(name.replace("many", "one"), le): v for (name, le), v in _samples(many).items()}
    want = _samples(one)
    assert math.isnan(got.pop(("one_sum", ""))) and math.isnan(want.pop(("one_sum", "")))
    assert got == want
    assert want[("one_bucket", "+Inf")] == len(amounts) - 1  # NaN is in no bucket


def test_observe_many_sums_like_observe() -> None:
    one = Histogram("one", "one by one", registry=CollectorRegistry())
    many = Histogram("many", "at once", registry=CollectorRegistry())
    amounts = [0.001 * i for i in range(1000)]
    for amount in amounts:
        one.observe(amount)
    observe_many(many, amounts)
    got = {(name.replace("many", "one"), le): v for (name, le), v in _samples(many).items()}
    assert got == _samples(one)
