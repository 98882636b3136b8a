"""The quota's HTTP surface, beside the handler: the caller's control headers in, the
``RateLimit`` / ``RateLimit-Policy`` / ``Retry-After`` fields and the upstream's throttling hints
out. The quota package itself takes and returns plain values.

A caller may lower its deadline with ``X-Defender-Proxy-Max-Wait`` (a duration: ``5s``,
``500ms``; never above ``throttle.max_wait``) and choose its priority with
``X-Defender-Proxy-Priority: interactive | bulk``. A value that is not one of those is refused
with 400 in the Defender envelope. ``X-Defender-Proxy-Client`` names the caller for the fair share
of a full quota (``proxy.quota.fair``); without it the caller's ``User-Agent`` does. None of these
headers is forwarded upstream.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from proxy import hints
from proxy.catalogue import RouteSpec
from proxy.errors import QuotaRefusal, RefusalError
from proxy.quota.limiter import QuotaExceeded
from proxy.quota.store import Decision, window_name
from proxy.units import parse_duration

MAX_WAIT_HEADER: Final = "X-Defender-Proxy-Max-Wait"
PRIORITY_HEADER: Final = "X-Defender-Proxy-Priority"
CLIENT_HEADER: Final = "X-Defender-Proxy-Client"
PRIORITIES: Final = ("interactive", "bulk")


@dataclass(frozen=True, slots=True)
class Control:
    """What the caller asked of the quota: its own deadline and priority (None: the defaults)."""

    max_wait: float | None = None
    bulk: bool | None = None
    #: the caller's name for the fair share: its ``X-Defender-Proxy-Client``, else ``User-Agent``
    client: str = ""


def control(headers: Mapping[str, str]) -> Control:
    """The caller's control headers, or ``RefusalError`` (400) naming the one that is wrong."""
    client = headers.get(CLIENT_HEADER)
    if client is None:
        client = headers.get("User-Agent", "")
    return Control(
        _max_wait(headers.get(MAX_WAIT_HEADER)), _bulk(headers.get(PRIORITY_HEADER)), client
    )


def _max_wait(asked: str | None) -> float | None:
    if asked is None:
        return None
    try:
        return parse_duration(asked.strip())
    except ValueError:
        raise RefusalError(
            400, "BadRequest", f"{MAX_WAIT_HEADER} must be a duration such as 5s or 500ms"
        ) from None


def _bulk(asked: str | None) -> bool | None:
    if asked is None:
        return None
    value = asked.strip().lower()
    if value not in PRIORITIES:
        raise RefusalError(
            400, "BadRequest", f"{PRIORITY_HEADER} must be one of: {', '.join(PRIORITIES)}"
        )
    return value == "bulk"


def upstream_hint(status: int, retry_after: str | None, message: str) -> hints.Hint | None:
    """What a throttled answer says about waiting and about its limit; None for other answers.

    Throttled: a 429, or a 503 with ``Retry-After`` (Microsoft Graph throttles that way too, "503
    Service Unavailable ... Retry-After", per its throttling guidance); a 503 without it is an
    outage, not a quota.
    """
    if status != 429 and not (status == 503 and retry_after is not None):
        return None
    return hints.upstream_hint(retry_after, message, time.time())


class RateLimitFields:
    """``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers) per route,
    and the proxy's own 429."""

    def __init__(self, routes: Iterable[RouteSpec]) -> None:
        self._policy: dict[str, str] = {}
        #: the RateLimit field with %d for each window's remaining count and reset seconds
        self._state: dict[str, str] = {}
        for spec in routes:
            names = [window_name(limit.window) for limit in spec.limits]
            self._policy[spec.name] = ", ".join(
                f'"{name}";q={limit.count};w={math.ceil(limit.window)}'
                for name, limit in zip(names, spec.limits, strict=True)
            )
            self._state[spec.name] = ", ".join(f'"{name}";r=%d;t=%d' for name in names)

    def fields(self, route: str, decision: Decision) -> dict[str, str]:
        """The two fields for ``route`` after ``decision``."""
        values: list[int] = []
        for left, reset in zip(decision.remaining, decision.reset, strict=True):
            values += (left, math.ceil(reset))
        return {
            "RateLimit-Policy": self._policy[route],
            "RateLimit": self._state[route] % tuple(values),
        }

    def refusal(self, exc: QuotaExceeded) -> QuotaRefusal:
        """The proxy's 429 for a request the quota refused, with ``Retry-After``."""
        return QuotaRefusal(
            429,
            "TooManyRequests",
            str(exc),
            headers={"Retry-After": str(exc.retry_after), **self.fields(exc.route, exc.decision)},
        )
