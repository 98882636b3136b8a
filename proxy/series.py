"""Counters, gauges and histograms for the per-request path, each its own registry collector.

``prometheus_client``'s metric children take a lock and check their own state on every update:
several microseconds a request once a request touches eight of them. The proxy updates its metrics
from the event loop's one thread and is scraped from that same thread (the admin port is served by
the same loop), so the per-request series here are plain numbers in slotted objects, turned into
metric families only when a scrape asks. Names, help texts, labels, bucket bounds and the text
format are those of ``prometheus_client``'s own types; only the ``_created`` samples are left out.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, utils
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)


class CounterChild:
    """One labelled counter series."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (≥ 0)."""
        if amount < 0:
            raise ValueError("counters only go up")
        self.value += amount


class GaugeChild:
    """One labelled gauge series."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        """Set the gauge to ``value``."""
        self.value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount``."""
        self.value += amount


class HistogramChild:
    """One labelled histogram series: a count per bucket (not cumulative) and the sum."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Record one observation."""
        # The first bound ≥ value: Prometheus buckets are "less than or equal".
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value


# prometheus_client's own writer of bucket bounds (``0.005``, ``1e+06``, ``+Inf``), untyped there.
_bound_text: Callable[[float], str] = utils.floatToGoString


Child = TypeVar("Child", CounterChild, GaugeChild, HistogramChild)


class _Family(Generic[Child]):
    """A labelled metric: its children by label values, made on first use."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Child] = {}
        registry.register(self)

    def _new(self) -> Child:
        raise NotImplementedError

    def family(self) -> Metric:
        """The metric family with every series, for a scrape."""
        raise NotImplementedError

    def collect(self) -> Iterator[Metric]:
        """The registry's collector interface: this metric and its series."""
        yield self.family()

    def describe(self) -> Iterator[Metric]:
        """The registry's name check: this metric, whatever its series."""
        yield self.family()

    def labels(self, *values: str, **named: str) -> Child:
        """The child for these label values (positional, or all by name)."""
        if named:
            if values or set(named) != set(self.labelnames):
                raise ValueError(f"{self.name} takes the labels {self.labelnames}")
            values = tuple(named[n] for n in self.labelnames)
        elif len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes the labels {self.labelnames}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new()
        return child

    def remove(self, *values: str) -> None:
        """Drop the series of these label values, if there is one (a scrape no longer shows it)."""
        self._children.pop(tuple(str(v) for v in values), None)

    def items(self) -> list[tuple[tuple[str, ...], Child]]:
        """The series so far, as (label values, child)."""
        return list(self._children.items())


ValueChild = TypeVar("ValueChild", CounterChild, GaugeChild)


class _Valued(_Family[ValueChild]):
    """A family whose series are single values: counters and gauges."""

    _metric: type[CounterMetricFamily | GaugeMetricFamily]

    def family(self) -> Metric:
        """The metric family with every series, for a scrape."""
        metric = self._metric(self.name, self.documentation, labels=self.labelnames)
        for key, child in self.items():
            metric.add_metric(key, child.value)
        return metric


class Counter(_Valued[CounterChild]):
    """A labelled counter (exported with the ``_total`` suffix)."""

    _metric = CounterMetricFamily

    def _new(self) -> CounterChild:
        return CounterChild()


class Gauge(_Valued[GaugeChild]):
    """A labelled gauge."""

    _metric = GaugeMetricFamily

    def _new(self) -> GaugeChild:
        return GaugeChild()


class Histogram(_Family[HistogramChild]):
    """A labelled histogram with fixed bucket bounds (``+Inf`` added)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        registry: CollectorRegistry,
        buckets: Sequence[float],
    ) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds != sorted(set(bounds)):
            raise ValueError(f"{name}: bucket bounds must be distinct")
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.bounds = tuple(bounds)
        super().__init__(name, documentation, labelnames, registry)

    def _new(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def family(self) -> Metric:
        """The metric family with every series, for a scrape."""
        metric = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in self.items():
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip(self.bounds, child.counts, strict=True):
                cumulative += count
                buckets.append((_bound_text(bound), cumulative))
            metric.add_metric(key, buckets, child.sum)
        return metric
