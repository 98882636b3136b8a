"""The quota policy: wait or refuse, deadlines, priorities, upstream pauses, shadow mode.

Per request: the route's quota is asked for the earliest slot within the caller's deadline
(``throttle.max_wait``, or less if the caller asks for less). Admitted callers sleep until their
slot; for the others ``admit`` raises ``QuotaExceeded``, which the handler answers with 429 and
``Retry-After``. Bulk requests (by route, or when the caller says so) may not use the last
``bulk_reserve`` share of any window, so an isolate action is never starved by an export.
Plain values in, plain values out: the caller's headers are read, and the answer's headers
written, by ``proxy.quota_headers``. The clock and the sleep are injected, so a test of waiting
moves time instead of spending it.

When the API itself answers 429, the route's quota is paused for every replica until the time the
API asked for (``Retry-After`` or the hints in the body), capped at ``max_pause`` and jittered;
with no hint at all the pause backs off exponentially from one second.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from proxy import hints
from proxy.catalogue import RouteSpec
from proxy.config import Throttle
from proxy.logs import get_logger
from proxy.metrics import Metrics
from proxy.quota.learned import LearnedLimits
from proxy.quota.store import Decision, Quota, QuotaStore, as_windows, quota_key, window_name

OUTCOMES: Final = ("admitted", "waited", "refused", "shadow_waited", "shadow_refused")


def fresh_member(member: str) -> str:
    """Another admission id for the same request (a retry after a pause)."""
    return f"{member}+"


class QuotaExceeded(Exception):  # noqa: N818 - a refusal, not a failure
    """No slot within the caller's deadline: the request is refused (429 from the proxy)."""

    def __init__(self, route: str, deadline: float, decision: Decision) -> None:
        #: whole seconds until a slot would be free (at least 1), for ``Retry-After``
        self.retry_after = max(1, math.ceil(decision.wait))
        super().__init__(
            f"the {route} quota has no slot within {deadline:g}s; retry in {self.retry_after}s"
        )
        self.route = route
        self.decision = decision


@dataclass(slots=True)
class Admission:
    """The quota's answer for one request, as the handler needs it."""

    quota: Quota
    decision: Decision
    outcome: str
    waited: float
    #: seconds the store took to decide (one round trip for Redis)
    decided: float


@dataclass(frozen=True, slots=True)
class _RoutePolicy:
    quota: Quota
    names: tuple[str, ...]
    bulk: bool
    shadow: bool


@dataclass(frozen=True, slots=True)
class _Children:
    """A route's metric children, looked up once."""

    remaining: tuple[Any, ...]
    outcomes: dict[str, Any]
    wait: Any


class Limiter:
    """Admits requests against the shared quota and reacts to the API's own 429s."""

    def __init__(
        self,
        throttle: Throttle,
        routes: tuple[RouteSpec, ...],
        policies: Mapping[str, tuple[str, str]],
        store: QuotaStore,
        metrics: Metrics,
        rng: random.Random | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._throttle = throttle
        self.store = store
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._clock = clock
        self._sleep = sleep
        self._routes: dict[str, _RoutePolicy] = {}
        for spec in routes:
            priority, mode = policies.get(spec.name, ("interactive", throttle.mode))
            quota = Quota(
                quota_key(throttle.namespace, spec.name),
                as_windows([(lim.count, lim.window) for lim in spec.limits], throttle.margin),
            )
            names = tuple(window_name(lim.window) for lim in spec.limits)
            self._routes[spec.name] = _RoutePolicy(
                quota, names, priority == "bulk", mode == "shadow"
            )
        self._children: dict[str, _Children] = {}
        self._streak: dict[str, int] = {}
        self._paused_until: dict[str, float] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._learned = LearnedLimits(routes, metrics)
        self._log = get_logger("quota")
        self._store_timer = metrics.store_duration.labels(store.name)
        metrics.pauses_active.set_function(self._count_pauses)

    def _count_pauses(self) -> float:
        now = self._clock()
        return float(sum(1 for until in self._paused_until.values() if until > now))

    async def admit(
        self, route: str, member: str, max_wait: float | None = None, bulk: bool | None = None
    ) -> Admission:
        """Wait for the request's slot, or raise ``QuotaExceeded``.

        ``max_wait`` is the caller's own deadline in seconds (never more than
        ``throttle.max_wait``; None: that one); ``bulk`` whether the caller asked for bulk or
        interactive priority (None: the route's).
        """
        policy = self._routes[route]
        deadline = (
            self._throttle.max_wait if max_wait is None else min(self._throttle.max_wait, max_wait)
        )
        is_bulk = policy.bulk if bulk is None else bulk
        reserve = self._throttle.bulk_reserve if is_bulk else 0.0
        started = self._clock()
        decision = await self.store.admit(policy.quota, member, deadline, reserve, policy.shadow)
        decided = self._clock() - started
        self._store_timer.observe(decided)
        children = self._children.get(route) or self._children_of(route, policy)
        for gauge, left in zip(children.remaining, decision.remaining, strict=True):
            gauge.set(left)
        if policy.shadow:
            if decision.wait <= 0:
                outcome = "admitted"
            else:
                outcome = "shadow_waited" if decision.admitted else "shadow_refused"
            children.outcomes[outcome].inc()
            return Admission(policy.quota, decision, outcome, 0.0, decided)
        if not decision.admitted:
            children.outcomes["refused"].inc()
            raise QuotaExceeded(route, deadline, decision)
        if decision.wait > 0:
            try:
                await self._sleep(decision.wait)
            except asyncio.CancelledError:
                # The caller went away while waiting: give its slot back to the others.
                self._release_later(policy.quota, member)
                raise
            if self._paused_until.get(route, 0.0) > self._clock():
                # The API answered 429 while this caller waited: its slot predates the pause.
                self._release_later(policy.quota, member)
                return await self.admit(route, fresh_member(member), max_wait, bulk)
            outcome = "waited"
        else:
            outcome = "admitted"
        children.wait.observe(decision.wait)
        children.outcomes[outcome].inc()
        return Admission(policy.quota, decision, outcome, decision.wait, decided)

    def _children_of(self, route: str, policy: _RoutePolicy) -> _Children:
        # Made on a route's first admission, so that routes nobody calls add no series.
        m = self._metrics
        children = _Children(
            tuple(m.quota_remaining.labels(route, name) for name in policy.names),
            {o: m.admissions.labels(route, o) for o in OUTCOMES},
            m.admission_wait.labels(route),
        )
        self._children[route] = children
        return children

    def _release_later(self, quota: Quota, member: str) -> None:
        task = asyncio.get_running_loop().create_task(self.store.release(quota, member))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def observe_answer(self, route: str, status: int, hint: hints.Hint | None = None) -> None:
        """React to the API's answer: a 429 pauses the route's quota for every replica.

        ``hint`` is what the answer said about waiting (``hints.upstream_hint``); a 429 without
        one backs off.
        """
        if status != 429:
            if self._streak.get(route):
                self._streak[route] = 0
            return
        hint = hint or hints.NO_HINT
        self._metrics.upstream_throttled.labels(route, hint.reason).inc()
        if hint.stated is not None:
            self._learned.observe(route, *hint.stated)
        if hint.seconds is None:
            streak = self._streak.get(route, 0) + 1
            self._streak[route] = streak
            seconds = hints.backoff(streak)
        else:
            seconds = hint.seconds
        pause = hints.jittered(seconds, self._throttle.max_pause, self._rng)
        policy = self._routes[route]
        left = await self.store.pause(policy.quota, pause)
        self._paused_until[route] = self._clock() + left
        self._log.warning(
            "upstream throttled: quota paused for every replica",
            route=route,
            pause_s=round(left, 3),
            hint=hint.source,
            reason=hint.reason,
        )

    async def warm(self) -> None:
        """Prepare the store before the first request (connections, scripts)."""
        if not await self.store.warm():
            self._log.warning("quota store not reachable at start: using the local share")

    async def close(self) -> None:
        """Finish the give-backs in flight and close the store."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self.store.close()
