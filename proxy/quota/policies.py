"""Each route's quota policy as the limiter applies it, and the metric series of its decisions.

``route_table`` turns the settings (the route table, each route's priority and mode, the scopes,
the margin) into one ``RoutePolicy`` per route name. The limiter holds one table at a time and a
reload swaps it whole (``Limiter.reconfigure``); a request that took its policy before the swap
keeps it to its end.

``RouteSeries`` looks up the metric children of a route and a caller's labels once. The window
labels of ``defender_proxy_quota_remaining`` follow the table: a window a reload took away loses
its series (it would show its last figure for ever), and a decision made on a policy the table no
longer holds leaves the remaining gauges alone rather than bring such a series back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from proxy.catalogue import RouteSpec
from proxy.config import Throttle, route_scopes
from proxy.metrics import Metrics
from proxy.quota.store import MICROS, Quota, as_windows, quota_key, window_name

OUTCOMES: Final = ("admitted", "waited", "refused", "shadow_waited", "shadow_refused")


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """How one route is admitted: its quota (shared form), window names, priority, mode, scope."""

    quota: Quota
    names: tuple[str, ...]
    bulk: bool
    shadow: bool
    #: whose quota: ``app`` (app + tenant), ``tenant`` or ``shared`` (the deployment's)
    scope: str
    #: seconds an admission stays in some window of the route: the widest, margin included
    horizon: float


def route_table(
    throttle: Throttle,
    routes: Sequence[RouteSpec],
    policies: Mapping[str, tuple[str, str]],
) -> dict[str, RoutePolicy]:
    """The policy of every route of ``routes``, with ``policies``' (priority, mode) by name."""
    scopes = route_scopes(throttle)
    table: dict[str, RoutePolicy] = {}
    for spec in routes:
        priority, mode = policies.get(spec.name, ("interactive", throttle.mode))
        quota = Quota(
            quota_key(throttle.namespace, spec.name),
            as_windows([(lim.count, lim.window) for lim in spec.limits], throttle.margin),
        )
        table[spec.name] = RoutePolicy(
            quota,
            tuple(window_name(lim.window) for lim in spec.limits),
            priority == "bulk",
            mode == "shadow",
            scopes.get(spec.name, "shared"),
            quota.widest / MICROS,
        )
    return table


@dataclass(frozen=True, slots=True)
class Series:
    """The metric children of one route and one caller's labels."""

    #: the window names the remaining gauges are for
    names: tuple[str, ...]
    #: one gauge per window; none for a policy the table no longer holds
    remaining: tuple[Any, ...]
    outcomes: dict[str, Any]
    wait: Any

    def show(self, left: Sequence[int]) -> None:
        """Set the remaining gauges to ``left``, the admissions left in each window."""
        if self.remaining:
            for gauge, count in zip(self.remaining, left, strict=True):
                gauge.set(count)


class RouteSeries:
    """The ``Series`` of each (route, tenant, app) admitted on, made on first use."""

    __slots__ = ("_cache", "_metrics", "_table")

    def __init__(self, metrics: Metrics, table: Mapping[str, RoutePolicy]) -> None:
        self._metrics = metrics
        self._table = table
        self._cache: dict[tuple[str, str, str], Series] = {}

    def of(self, labels: tuple[str, str, str], policy: RoutePolicy) -> Series:
        """The series of ``labels`` (route, tenant, app) for a decision made on ``policy``."""
        series = self._cache.get(labels)
        if series is not None and series.names == policy.names:
            return series
        # Made on the first admission of a route (and identity labels), so that routes nobody
        # calls add no series; the identity labels are bounded by throttle.identities.names.
        m = self._metrics
        route, tenant, app = labels
        current = self._table.get(route) is policy
        series = Series(
            policy.names,
            tuple(m.quota_remaining.labels(route, name, tenant, app) for name in policy.names)
            if current
            else (),
            {o: m.admissions.labels(route, o, tenant, app) for o in OUTCOMES},
            m.admission_wait.labels(route),
        )
        if current:
            self._cache[labels] = series
        return series

    def retable(self, table: Mapping[str, RoutePolicy]) -> None:
        """Follow a new route table: the remaining series of windows it no longer has go."""
        for (route, tenant, app), series in self._cache.items():
            policy = table.get(route)
            kept = () if policy is None else policy.names
            for name in series.names:
                if name not in kept:
                    self._metrics.quota_remaining.remove(route, name, tenant, app)
        self._cache.clear()
        self._table = table
