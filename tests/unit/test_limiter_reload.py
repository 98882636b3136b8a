"""A reload of the quota's settings, in place, on a hand-driven clock: what was admitted stays
counted, a waiter keeps its slot, and admissions asked afterwards follow the new settings."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

import pytest

from proxy.config import Identities, Throttle, effective_routes, route_policies
from proxy.identity import Claims
from proxy.metrics import Metrics
from proxy.quota.limiter import Limiter, QuotaExceeded
from proxy.quota.memory import MemoryStore
from proxy.quota.store import as_windows
from proxy.throttle_config import RouteOverride
from proxy.units import parse_limit
from tests.unit.test_limiter import Time

ROUTE = "machines.list"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
APP = "c8d9e0f1-2a3b-4c5d-8e6f-708192a3b4c5"


def throttle(*limits: str, **changes: object) -> Throttle:
    route = RouteOverride(ROUTE, None, tuple(parse_limit(t) for t in limits))
    return replace(Throttle(margin=0.0, routes=(route,)), **changes)  # type: ignore[arg-type]


def limiter(clock: Time, settings: Throttle, metrics: Metrics | None = None) -> Limiter:
    return Limiter(
        settings,
        effective_routes(settings),
        route_policies(settings),
        MemoryStore(clock),
        metrics or Metrics(),
        random.Random(7),
        clock=clock,
        sleep=clock.sleep,
    )


def reconfigure(quota: Limiter, settings: Throttle) -> None:
    quota.reconfigure(settings, effective_routes(settings), route_policies(settings))


async def test_a_lowered_limit_counts_what_the_window_already_holds() -> None:
    """10/1m → 5/1m with 6 admitted: nothing more this minute, the next slot when 2 have left."""
    clock = Time()
    quota = limiter(clock, throttle("10/1m"))
    for i in range(6):
        clock.now += 1.0
        await quota.admit(ROUTE, f"m{i}")
    reconfigure(quota, throttle("5/1m"))
    with pytest.raises(QuotaExceeded) as refused:
        await quota.admit(ROUTE, "after", max_wait=0.0)
    # Admitted at 1001..1006: the window ending at 1062 holds the four from 1003 on.
    assert refused.value.decision.wait == pytest.approx(1062.0 - clock.now)


async def test_a_raised_limit_admits_at_once_what_the_old_one_held_back() -> None:
    """2/1m → 4/1m: the third and fourth callers of the minute go without waiting."""
    clock = Time()
    quota = limiter(clock, throttle("2/1m"))
    await quota.admit(ROUTE, "a")
    await quota.admit(ROUTE, "b")
    reconfigure(quota, throttle("4/1m"))
    outcomes = [(await quota.admit(ROUTE, m, max_wait=0.0)).outcome for m in ("c", "d")]
    assert outcomes == ["admitted", "admitted"]


async def test_a_waiter_keeps_its_slot_through_a_reload() -> None:
    """A caller asleep on its reservation when the limit is lowered goes at its own time, and
    the slot it held still counts for the callers after it."""
    clock = Time()
    quota = limiter(clock, throttle("2/10s"))
    await quota.admit(ROUTE, "a")
    await quota.admit(ROUTE, "b")

    async def lowered() -> None:
        reconfigure(quota, throttle("1/10s"))

    clock.meanwhile = lowered
    waiter = await quota.admit(ROUTE, "waiter")
    assert (waiter.outcome, clock.slept) == ("waited", [10.0])
    # At 1010 the waiter holds the only place of the new 1/10s window: the next goes at 1020.
    with pytest.raises(QuotaExceeded) as refused:
        await quota.admit(ROUTE, "next", max_wait=5.0)
    assert refused.value.decision.wait == pytest.approx(10.0)


async def test_quotas_made_per_identity_take_the_new_windows() -> None:
    """An identity's quota made before the reload is decided by the new limit after it."""
    clock = Time()
    quota = limiter(clock, throttle("3/1m"))
    caller = Claims(TENANT, APP)
    for i in range(2):
        await quota.admit(ROUTE, f"m{i}", claims=caller)
    reconfigure(quota, throttle("2/1m"))
    assert quota.quota_for(ROUTE, caller).windows == as_windows([(2, 60.0)], 0.0)
    with pytest.raises(QuotaExceeded):
        await quota.admit(ROUTE, "third", max_wait=0.0, claims=caller)


async def test_a_new_window_starts_from_what_the_widest_one_holds() -> None:
    """10/1m → 10/1m + 3/10m (in-process store): the new ten-minute window starts from the
    minute's four admissions, so it is full already."""
    clock = Time()
    quota = limiter(clock, throttle("10/1m"))
    for i in range(4):
        await quota.admit(ROUTE, f"m{i}")
    reconfigure(quota, throttle("10/1m", "3/10m"))
    with pytest.raises(QuotaExceeded) as refused:
        await quota.admit(ROUTE, "after", max_wait=0.0)
    assert refused.value.decision.remaining == (6, 0)


async def test_a_route_taken_away_still_admits_the_requests_routed_before() -> None:
    """A request routed to a route the reload removed is admitted on that route's last policy."""
    clock = Time()
    added = RouteOverride("tools.custom", ("GET /api/custom",), (parse_limit("1/1m"),))
    first = replace(throttle("5/1m"), routes=(*throttle("5/1m").routes, added))
    quota = limiter(clock, first)
    reconfigure(quota, throttle("5/1m"))
    assert (await quota.admit("tools.custom", "late")).outcome == "admitted"
    with pytest.raises(QuotaExceeded):
        await quota.admit("tools.custom", "later", max_wait=0.0)


async def test_the_series_of_a_window_taken_away_go() -> None:
    """defender_proxy_quota_remaining loses the series of a window the reload removed."""
    clock = Time()
    metrics = Metrics()
    quota = limiter(clock, throttle("10/1m", "100/1h"), metrics)
    await quota.admit(ROUTE, "a")
    await asyncio.sleep(0)  # an admission at once is counted on the loop's next turn
    labels = {"route": ROUTE, "tenant": "anonymous", "app": "anonymous"}
    sample = metrics.registry.get_sample_value
    assert sample("defender_proxy_quota_remaining", {**labels, "window": "1h"}) == 99
    reconfigure(quota, throttle("10/1m"))
    assert sample("defender_proxy_quota_remaining", {**labels, "window": "1h"}) is None
    await quota.admit(ROUTE, "b")
    await asyncio.sleep(0)
    assert sample("defender_proxy_quota_remaining", {**labels, "window": "1m"}) == 8


async def test_shadow_and_max_wait_apply_to_the_next_admission() -> None:
    """mode and max_wait change with a reload: a shadow route holds nobody back."""
    clock = Time()
    quota = limiter(clock, throttle("1/1m"))
    await quota.admit(ROUTE, "a")
    reconfigure(quota, throttle("1/1m", mode="shadow"))
    shadowed = await quota.admit(ROUTE, "b")
    assert (shadowed.outcome, clock.slept) == ("shadow_refused", [])
    reconfigure(quota, throttle("1/1m", max_wait=5.0))
    with pytest.raises(QuotaExceeded):
        await quota.admit(ROUTE, "c")


async def test_a_lowered_identity_bound_sends_new_identities_to_overflow() -> None:
    """identities.max 10 → 1: the identity held keeps its quota, a new one shares overflow."""
    clock = Time()
    quota = limiter(clock, throttle("5/1m"))
    first = Claims(TENANT, APP)
    await quota.admit(ROUTE, "a", claims=first)
    reconfigure(quota, throttle("5/1m", identities=Identities(max=1)))
    other = Claims("0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", APP)
    assert quota.quota_for(ROUTE, first).key.endswith(f"{TENANT}.{APP}}}")
    assert quota.quota_for(ROUTE, other).key.endswith(":overflow}")


async def test_namespace_and_margin_are_not_changed_in_place() -> None:
    """A reconfigure keeps the store's key names: the namespace and the margin of its start."""
    clock = Time()
    quota = limiter(clock, throttle("5/1m"))
    before = quota.quota_for(ROUTE, Claims(None, None))
    reconfigure(quota, throttle("5/1m", namespace="other", margin=2.0))
    assert quota.quota_for(ROUTE, Claims(None, None)) == before
