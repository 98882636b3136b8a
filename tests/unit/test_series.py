"""Tests for proxy.series: the same exposition as prometheus_client's own types, label checks."""

from __future__ import annotations

import prometheus_client
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from proxy import series

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.1, 1.0, 10.0, 1e6)
LABELS = st.sampled_from(["a", "b", 'quote"and\\slash', "ünïcode"])
VALUES = st.floats(min_value=0, max_value=2e6, allow_nan=False)


def _without_created(text: bytes) -> list[str]:
    return [line for line in text.decode().splitlines() if "_created" not in line]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(LABELS, VALUES), max_size=40))
def test_histogram_exposition_matches_prometheus_client(
    observations: list[tuple[str, float]],
) -> None:
    """Buckets (bounds on them included), sums and counts read as prometheus_client writes them."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = series.Histogram("h_seconds", "Help.", ["route"], registry=ours, buckets=BUCKETS)
    reference = prometheus_client.Histogram(
        "h_seconds", "Help.", ["route"], registry=theirs, buckets=BUCKETS
    )
    for label, value in observations:
        mine.labels(label).observe(value)
        reference.labels(label).observe(value)
    assert _without_created(generate_latest(ours)) == _without_created(generate_latest(theirs))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(LABELS, LABELS, VALUES), max_size=40))
def test_counter_and_gauge_exposition_match_prometheus_client(
    updates: list[tuple[str, str, float]],
) -> None:
    """Counters (with _total) and gauges read as prometheus_client writes them."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counter = series.Counter("c", "Counts.", ["x", "y"], registry=ours)
    gauge = series.Gauge("g", "Level.", ["x", "y"], registry=ours)
    ref_counter = prometheus_client.Counter("c", "Counts.", ["x", "y"], registry=theirs)
    ref_gauge = prometheus_client.Gauge("g", "Level.", ["x", "y"], registry=theirs)
    for x, y, value in updates:
        counter.labels(x, y).inc(value)
        ref_counter.labels(x, y).inc(value)
        gauge.labels(x=x, y=y).set(value)
        ref_gauge.labels(x=x, y=y).set(value)
    assert _without_created(generate_latest(ours)) == _without_created(generate_latest(theirs))


def test_a_value_on_a_bound_falls_in_that_bucket() -> None:
    """A value equal to a bound counts in that bound's bucket (le means less than or equal)."""
    registry = CollectorRegistry()
    histogram = series.Histogram("h", "Help.", ["r"], registry=registry, buckets=(1.0, 2.0))
    histogram.labels("x").observe(1.0)
    assert registry.get_sample_value("h_bucket", {"r": "x", "le": "1.0"}) == 1.0
    assert registry.get_sample_value("h_count", {"r": "x"}) == 1.0


def test_wrong_labels_are_refused() -> None:
    """Too few, too many or misnamed labels raise instead of making a stray series."""
    counter = series.Counter("c", "Counts.", ["x", "y"], registry=CollectorRegistry())
    with pytest.raises(ValueError, match="takes the labels"):
        counter.labels("only-one")
    with pytest.raises(ValueError, match="takes the labels"):
        counter.labels(x="1", z="2")
    with pytest.raises(ValueError, match="takes the labels"):
        counter.labels("1", y="2")


def test_counters_only_go_up() -> None:
    """A negative increment is refused, as Prometheus counters never decrease."""
    counter = series.Counter("c", "Counts.", [], registry=CollectorRegistry())
    with pytest.raises(ValueError, match="only go up"):
        counter.labels().inc(-1)


def test_a_name_taken_twice_is_refused() -> None:
    """Registering a second metric under a name already on the registry fails at once."""
    registry = CollectorRegistry()
    series.Counter("c", "Counts.", [], registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        prometheus_client.Counter("c", "Counts.", registry=registry)


def test_unsorted_or_repeated_bounds_are_refused() -> None:
    """Bucket bounds must be distinct; they are sorted and closed with +Inf."""
    with pytest.raises(ValueError, match="distinct"):
        series.Histogram("h", "Help.", [], registry=CollectorRegistry(), buckets=(1.0, 1.0))
    histogram = series.Histogram("h2", "Help.", [], registry=CollectorRegistry(), buckets=(2, 1))
    assert histogram.bounds == (1.0, 2.0, float("inf"))
