"""Limits the API states in its 429s, set against the configured ones.

The documented limits are minimums and vary with the tenant's size; a 429 that states its limit
("API calls quota exceeded! maximum allowed 45 per 00:01:00") says what the API really counts.
Each stated figure is exported (``defender_proxy_quota_learned_limit{route,window}``) and, when it
differs from the route's configured limit for that window, named in one warning per route,
window and figure, with the config key to change. The configured limit is never changed here:
a figure read from free text is evidence for the operator, not a setting.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from proxy.catalogue import RouteSpec
from proxy.logs import get_logger
from proxy.metrics import Metrics
from proxy.quota.store import window_name

#: The config key that sets a route's limits.
CONFIG_KEY: Final = "throttle.routes"
#: The window label of a stated window the route does not configure (keeps the labels bounded).
OTHER_WINDOW: Final = "other"
#: Figures remembered as warned about: an upstream stating a new figure on every answer must not
#: grow this process's memory (or its log) without end.
MAX_WARNED: Final = 256


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class LearnedLimits:
    """Compares the limits stated in 429s with the configured ones."""

    def __init__(self, routes: Iterable[RouteSpec], metrics: Metrics) -> None:
        self._configured: dict[str, dict[int, int]] = {
            spec.name: {_ms(limit.window): limit.count for limit in spec.limits} for spec in routes
        }
        self._gauge = metrics.quota_learned_limit
        self._warned: set[tuple[str, int, int]] = set()
        self._log = get_logger("quota")

    def observe(self, route: str, count: int, window: float) -> None:
        """Record that the API stated ``count`` per ``window`` seconds for ``route``."""
        configured = self._configured.get(route)
        if configured is None:
            return
        known = configured.get(_ms(window))
        label = window_name(window) if known is not None else OTHER_WINDOW
        self._gauge.labels(route, label).set(count)
        if known == count:
            return
        key = (route, _ms(window), count)
        if key in self._warned or len(self._warned) >= MAX_WARNED:
            return
        self._warned.add(key)
        self._log.warning(
            "upstream states a limit other than the configured one: change throttle.routes",
            route=route,
            window=window_name(window),
            stated=count,
            configured=known,
            config_key=CONFIG_KEY,
        )
