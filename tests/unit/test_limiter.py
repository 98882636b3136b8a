"""The quota policy on a hand-driven clock: waits are slept on the fake clock, never for real."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from proxy.config import Throttle, effective_routes, route_policies
from proxy.hints import CALLS, MESSAGE_WINDOW, RETRY_AFTER, Hint
from proxy.metrics import Metrics
from proxy.quota.limiter import Limiter, QuotaExceeded
from proxy.quota.memory import MemoryStore
from proxy.throttle_config import RouteOverride
from proxy.units import parse_limit

ROUTE = "machines.list"


class Time:
    """A fake monotonic clock, and a sleep that moves it instead of waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []
        #: run once inside the next sleep, as if it happened while the caller waited
        self.meanwhile: Any = None

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if self.meanwhile is not None:
            action, self.meanwhile = self.meanwhile, None
            await action()
        self.now += seconds


def limiter(clock: Time, *limits: str, max_wait: float = 30.0) -> tuple[Limiter, Metrics]:
    route = RouteOverride(ROUTE, None, tuple(parse_limit(t) for t in limits), None, None)
    throttle = Throttle(max_wait=max_wait, margin=0.0, routes=(route,))
    metrics = Metrics()
    built = Limiter(
        throttle,
        effective_routes(throttle),
        route_policies(throttle),
        MemoryStore(clock),
        metrics,
        random.Random(7),
        clock=clock,
        sleep=clock.sleep,
    )
    return built, metrics


async def test_a_caller_over_the_limit_sleeps_until_its_slot() -> None:
    """The third call on 2/10s sleeps exactly ten seconds of the injected clock, then goes."""
    clock = Time()
    quota, _ = limiter(clock, "2/10s")
    outcomes = [(await quota.admit(ROUTE, f"m{i}")).outcome for i in range(3)]
    assert outcomes == ["admitted", "admitted", "waited"]
    assert clock.slept == [10.0]


async def test_an_admission_at_once_is_counted_on_the_loops_next_turn() -> None:
    """A slot taken at once is counted after the request could go upstream; a wait at once."""
    clock = Time()
    quota, metrics = limiter(clock, "1/10s")
    sample = metrics.registry.get_sample_value
    labels = {"route": ROUTE, "tenant": "anonymous", "app": "anonymous"}
    assert (await quota.admit(ROUTE, "first")).outcome == "admitted"
    assert sample("defender_proxy_admissions_total", {**labels, "outcome": "admitted"}) is None
    await asyncio.sleep(0)
    assert sample("defender_proxy_admissions_total", {**labels, "outcome": "admitted"}) == 1
    assert sample("defender_proxy_quota_remaining", {**labels, "window": "10s"}) == 0
    assert (await quota.admit(ROUTE, "second")).outcome == "waited"
    assert sample("defender_proxy_admissions_total", {**labels, "outcome": "waited"}) == 1


async def test_beyond_the_deadline_is_refused_with_plain_values() -> None:
    """Past the caller's own deadline the limiter raises QuotaExceeded with the wait in seconds."""
    clock = Time()
    quota, _ = limiter(clock, "1/1m")
    await quota.admit(ROUTE, "first")
    with pytest.raises(QuotaExceeded) as refused:
        await quota.admit(ROUTE, "second", max_wait=5.0)
    assert refused.value.retry_after == 60
    assert refused.value.decision.remaining == (0,)
    assert clock.slept == []


async def test_the_caller_may_not_wait_longer_than_the_config() -> None:
    """A deadline asked above throttle.max_wait is cut to it."""
    clock = Time()
    quota, _ = limiter(clock, "1/1m", max_wait=10.0)
    await quota.admit(ROUTE, "first")
    with pytest.raises(QuotaExceeded):
        await quota.admit(ROUTE, "second", max_wait=120.0)


async def test_bulk_leaves_the_reserve() -> None:
    """A caller asking for bulk may fill 80% of the window; interactive ones get the rest."""
    clock = Time()
    quota, _ = limiter(clock, "5/1m")
    for i in range(4):
        await quota.admit(ROUTE, f"b{i}", max_wait=0.0, bulk=True)
    with pytest.raises(QuotaExceeded):
        await quota.admit(ROUTE, "b4", max_wait=0.0, bulk=True)
    assert (await quota.admit(ROUTE, "isolate", max_wait=0.0, bulk=False)).outcome == "admitted"


async def test_a_pause_while_waiting_sends_the_caller_back_to_the_queue() -> None:
    """An upstream 429 during a caller's wait: its slot predates the pause, so it waits again."""
    clock = Time()
    quota, metrics = limiter(clock, "1/2s")
    await quota.admit(ROUTE, "first")

    async def throttled() -> None:
        await quota.observe_answer(ROUTE, 429, Hint(30.0, RETRY_AFTER, CALLS))

    clock.meanwhile = throttled
    admission = await quota.admit(ROUTE, "second")
    assert admission.outcome == "waited"
    assert clock.slept[0] == 2.0
    assert clock.slept[1] >= 30.0 - 2.0  # the rest of the pause, measured on the same clock
    labels = {"route": ROUTE, "cause": CALLS}
    assert metrics.registry.get_sample_value("defender_proxy_upstream_throttled_total", labels) == 1


async def test_a_429_without_a_hint_backs_off() -> None:
    """A 429 that says nothing pauses the route for the first back-off step (1 s, jittered)."""
    clock = Time()
    quota, metrics = limiter(clock, "10/1m")
    await quota.observe_answer(ROUTE, 429)
    assert metrics.registry.get_sample_value("defender_proxy_upstream_pauses_active") == 1
    clock.now += 1.2
    assert metrics.registry.get_sample_value("defender_proxy_upstream_pauses_active") == 0


async def test_a_stated_limit_is_exported_but_not_applied() -> None:
    """A 429 stating 45/1m against a configured 10/1m sets the gauge; the quota stays 10/1m."""
    clock = Time()
    quota, metrics = limiter(clock, "10/1m")
    await quota.observe_answer(ROUTE, 429, Hint(60.0, MESSAGE_WINDOW, CALLS, (45, 60.0)))
    labels = {"route": ROUTE, "window": "1m"}
    assert metrics.registry.get_sample_value("defender_proxy_quota_learned_limit", labels) == 45
    clock.now += 200.0
    admitted = [(await quota.admit(ROUTE, f"m{i}", max_wait=0.0)).outcome for i in range(10)]
    assert admitted == ["admitted"] * 10
    with pytest.raises(QuotaExceeded):
        await quota.admit(ROUTE, "eleventh", max_wait=0.0)
