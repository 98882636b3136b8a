"""Whether each upstream can be reached: a periodic connect to it, cached for ``/readyz``.

Every ``CHECK_INTERVAL`` seconds each listener's pool opens one connection to its upstream as a
request would (``Pool.probe``: the name, TCP, then the TLS handshake with the pool's own
``tls.verify`` and ``tls.ca_bundle``) and closes it, sending no request: a cheap check, one
connection per upstream per interval. ``/readyz`` reads the last result and never waits for one.

One failed check is not an outage (a dropped SYN, a resolver's hiccup): an upstream is taken for
unreachable only after ``FAILURES_TO_DOWN`` failed checks in a row, and for reachable again after
one success, so the state does not flap. That state is what ``/readyz`` shows and what
``defender_proxy_upstream_reachable{upstream}`` says (1 or 0), with the kind of the last failure
(``proxy.upstream.answers.KINDS``: ``refused``, ``dns``, ``tls_verify`` …), never its text.

It reports and does not decide readiness: when Microsoft cannot be reached, every replica cannot
reach it, and unready replicas would all leave their Service at once, turning the proxy's clear
502 in the Defender envelope into a refused connection for every caller (and, for a sidecar, keep
the tool itself from starting or serving). See README, "Endpoints of the admin port".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client import Gauge

from proxy.errors import UpstreamError
from proxy.logs import get_logger

#: Seconds between two checks of an upstream: a connection every 10 s costs the API nothing, and
#: with ``FAILURES_TO_DOWN`` an outage shows within about half a minute.
CHECK_INTERVAL: Final = 10.0
#: Failed checks in a row before an upstream counts as unreachable.
FAILURES_TO_DOWN: Final = 3

Probe = Callable[[], Awaitable[None]]


@dataclass(slots=True)
class Reachability:
    """One upstream's reachability as the checks found it."""

    name: str
    origin: str
    reachable: bool = True
    #: the clock's time of the last check (None before the first)
    checked: float | None = None
    failures: int = 0
    #: the kind of the most recent failed check ("" if none has failed)
    error: str = ""

    def view(self, now: float) -> dict[str, Any]:
        """What ``/readyz`` shows of it."""
        return {
            "name": self.name,
            "origin": self.origin,
            "reachable": self.reachable,
            "last_checked_s": None if self.checked is None else round(now - self.checked, 3),
            "consecutive_failures": self.failures,
            "last_error": self.error or None,
        }


class Watch:
    """The periodic checks of every upstream, and their results."""

    def __init__(
        self,
        upstreams: Sequence[tuple[str, str, Probe]],
        gauge: Gauge,
        interval: float = CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: (name, origin, probe) of each upstream, in the listeners' order
        self._probes = [probe for _, _, probe in upstreams]
        self.states = [Reachability(name, origin) for name, origin, _ in upstreams]
        self._gauges = [gauge.labels(name) for name, _, _ in upstreams]
        for child in self._gauges:
            child.set(1)
        self.interval = interval
        self._clock = clock
        self._log = get_logger("reachability")

    async def check(self) -> None:
        """Check every upstream once, at the same time."""
        await asyncio.gather(*(self._check(index) for index in range(len(self.states))))

    async def _check(self, index: int) -> None:
        state = self.states[index]
        try:
            await self._probes[index]()
        except UpstreamError as exc:
            self._failed(state, exc.kind, exc.cause)
        except Exception as exc:  # a bug must not end the checks for good
            self._log.error("reachability check failed", upstream=state.name, error=repr(exc))
            self._failed(state, "other", type(exc).__name__)
        else:
            if not state.reachable:
                self._log.info("upstream reachable again", upstream=state.name)
            state.reachable, state.failures = True, 0
        state.checked = self._clock()
        self._gauges[index].set(1 if state.reachable else 0)

    def _failed(self, state: Reachability, kind: str, cause: str) -> None:
        state.failures += 1
        state.error = kind
        if state.reachable and state.failures >= FAILURES_TO_DOWN:
            state.reachable = False
            self._log.warning(
                "upstream unreachable",
                upstream=state.name,
                origin=state.origin,
                kind=kind,
                cause=cause,
                failures=state.failures,
            )

    async def run(self) -> None:
        """Check every ``interval`` seconds until cancelled."""
        while True:
            await self.check()
            await asyncio.sleep(self.interval)

    def views(self) -> list[dict[str, Any]]:
        """Every upstream's state, as ``/readyz`` shows it."""
        now = self._clock()
        return [state.view(now) for state in self.states]
