"""Identities, path families and the in-process stores forget what can no longer matter: a table
filled by made-up callers empties a window later, never while an admission, a reservation or a
pause of theirs is still in a window. Real parts throughout, on a hand-driven clock."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import hints
from proxy.catalogue import OTHER, RouteSpec
from proxy.config import Identities, Throttle, effective_routes, route_policies
from proxy.identity import Claims, read_claims
from proxy.metrics import Metrics
from proxy.quota.fallback import FallbackStore
from proxy.quota.limiter import Limiter, QuotaExceeded
from proxy.quota.memory import MemoryStore
from proxy.quota.store import QuotaStore
from proxy.simulator.tokens import bearer
from proxy.throttle_config import RouteOverride
from proxy.units import Limit, parse_limit
from tests.conftest import LogCapture

ROUTE = "machines.list"
APP = "fc780465-2017-40d4-a0c5-307022471b92"


class Clock:
    """A fake monotonic clock; its sleep only records (reservations stay in the future)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def tenant(n: int) -> str:
    """The n-th made-up tenant id."""
    return f"{n:08x}-0000-4000-8000-000000000000"


def claims(n: int) -> Claims:
    """The claims of an app token in tenant ``n``."""
    return read_claims(bearer(tenant(n), APP))


def build(
    clock: Clock,
    limit: str,
    most: int,
    max_wait: float = 0.0,
    store: QuotaStore | None = None,
) -> tuple[Limiter, MemoryStore]:
    """A limiter on ``ROUTE`` (scope app) at ``limit``, at most ``most`` identities at once, over
    ``store`` or else a fresh in-process store (returned beside it)."""
    route = RouteOverride(ROUTE, None, (parse_limit(limit),), None, None)
    throttle = Throttle(
        max_wait=max_wait, margin=0.0, routes=(route,), identities=Identities(max=most)
    )
    memory = MemoryStore(clock)
    limiter = Limiter(
        throttle,
        effective_routes(throttle),
        route_policies(throttle),
        store or memory,
        Metrics(),
        random.Random(7),
        clock=clock,
        sleep=clock.sleep,
    )
    return limiter, memory


def overflowed(key: str) -> bool:
    """Whether a quota key is the shared overflow's."""
    return key.endswith(":overflow}")


async def test_a_real_tenant_gets_its_own_quota_once_the_junk_has_left_its_window(
    captured_logs: LogCapture,
) -> None:
    """Three made-up tenants fill max=3; a real one is on overflow while they are in their window,
    stays there while its own admissions on the overflow are (so never over its limit), and is on
    its own quota, with its whole limit, once the overflow has held nothing for a window."""
    clock = Clock()
    limiter, store = build(clock, "2/1m", most=3)
    for n in range(3):
        await limiter.admit(ROUTE, f"junk{n}", claims=claims(n))
    clock.now = 1059.9
    early = await limiter.admit(ROUTE, "real0", claims=claims(99))
    assert overflowed(early.quota.key)
    clock.now = 1060.0  # the junk has left: a place is free, but real0 is on the overflow
    assert overflowed((await limiter.admit(ROUTE, "real1", claims=claims(99))).quota.key)
    with pytest.raises(QuotaExceeded):  # 2/1m: a fresh quota of its own would have admitted it
        await limiter.admit(ROUTE, "real2", claims=claims(99))
    clock.now = 1120.0  # real1 (1060) has left its window: the overflow holds nothing
    late = [await limiter.admit(ROUTE, f"real{i}", claims=claims(99)) for i in (3, 4)]
    assert [overflowed(a.quota.key) for a in late] == [False, False]
    assert tenant(99) in late[0].quota.key
    assert limiter.held()["identities"] == 1
    assert len(store) == 1  # the real tenant's quota; no junk, the overflow's forgotten
    await asyncio.sleep(0)  # log lines are written on the loop's next turn
    warnings = [line for line in captured_logs.lines() if line.get("max") == 3]
    assert len(warnings) == 1


async def test_a_pending_reservation_keeps_its_identity_and_its_admissions() -> None:
    """A reservation 10s ahead holds its identity a window past the slot: another tenant stays
    on overflow until then, and the reserved slot still counts against its own tenant."""
    clock = Clock()
    limiter, _ = build(clock, "1/10s", most=1, max_wait=30.0)
    await limiter.admit(ROUTE, "a1", claims=claims(1))
    reserved = await limiter.admit(ROUTE, "a2", claims=claims(1))
    assert reserved.waited == 10.0  # slot at 1010, in its window until 1020
    clock.now = 1019.5
    assert overflowed((await limiter.admit(ROUTE, "b1", claims=claims(2))).quota.key)
    clock.now = 1020.0  # b1 (1019.5) is on the overflow until 1029.5: so is tenant 2
    again = await limiter.admit(ROUTE, "b2", claims=claims(2))
    assert overflowed(again.quota.key)
    assert again.waited == 9.5  # 1/10s for tenant 2 too: it waits out b1's window
    clock.now = 1039.5  # b2's slot (1029.5) has left its window
    own = await limiter.admit(ROUTE, "b3", claims=claims(2))
    assert not overflowed(own.quota.key)


async def test_a_reserved_slot_still_counts_for_its_tenant_until_it_leaves_its_window() -> None:
    """The slot reserved at 1010 refuses its tenant's next call at 1019.9 (the store kept it),
    and a request, even a refused one, holds its identity for a window from when it asked."""
    clock = Clock()
    limiter, store = build(clock, "1/10s", most=1, max_wait=30.0)
    await limiter.admit(ROUTE, "a1", claims=claims(1))
    await limiter.admit(ROUTE, "a2", claims=claims(1))
    clock.now = 1019.9
    with pytest.raises(QuotaExceeded):
        await limiter.admit(ROUTE, "a3", max_wait=0.0, claims=claims(1))
    clock.now = 1029.8
    assert overflowed((await limiter.admit(ROUTE, "b1", claims=claims(2))).quota.key)
    clock.now = 1029.9  # a place is free, but b1 (1029.8) holds tenant 2 on the overflow
    with pytest.raises(QuotaExceeded):
        await limiter.admit(ROUTE, "b2", max_wait=0.0, claims=claims(2))
    clock.now = 1039.9  # a window after b2 asked: a request, even refused, holds for a window
    assert not overflowed((await limiter.admit(ROUTE, "b3", claims=claims(2))).quota.key)
    assert len(store) == 1


async def test_an_active_pause_keeps_its_identity_until_it_ends() -> None:
    """An upstream 429 asking for 60s holds its identity (and its pause) long after its last
    admission left the window; once the pause has ended the identity is forgotten."""
    clock = Clock()
    limiter, store = build(clock, "5/10s", most=1)
    admission = await limiter.admit(ROUTE, "a1", claims=claims(1))
    await limiter.observe_answer(ROUTE, 429, hints.upstream_hint("60", "", 0.0), admission.quota)
    clock.now = 1059.0
    assert overflowed((await limiter.admit(ROUTE, "b1", claims=claims(2))).quota.key)
    with pytest.raises(QuotaExceeded):
        await limiter.admit(ROUTE, "a2", claims=claims(1))  # still paused, still its own
    clock.now = 1100.0  # past the pause and its jitter (at most 10%)
    assert not overflowed((await limiter.admit(ROUTE, "b2", claims=claims(2))).quota.key)
    assert len(store) == 1  # b's quota: a's logs and pause and overflow's 1059 entry are gone


async def test_the_overflow_warning_comes_again_only_after_overflow_emptied(
    captured_logs: LogCapture,
) -> None:
    """Overflow used twice in a window warns once; used again after a window idle, once more."""
    clock = Clock()
    limiter, _ = build(clock, "5/10s", most=1)

    async def warnings() -> int:
        await asyncio.sleep(0)  # log lines are written on the loop's next turn
        return len([line for line in captured_logs.lines() if line.get("max") == 1])

    await limiter.admit(ROUTE, "a1", claims=claims(1))
    for n in (2, 3):
        await limiter.admit(ROUTE, f"o{n}", claims=claims(n))
    clock.now = 1009.0  # tenant 1 stays held; overflow was used at 1000, in use until 1010
    await limiter.admit(ROUTE, "a2", claims=claims(1))
    await limiter.admit(ROUTE, "o4", claims=claims(4))
    assert await warnings() == 1
    clock.now = 1018.0  # overflow in use until 1019: the same episode
    await limiter.admit(ROUTE, "a3", claims=claims(1))
    await limiter.admit(ROUTE, "o5", claims=claims(5))
    assert await warnings() == 1
    clock.now = 1030.0  # overflow empty since 1028: the next use is a new episode
    await limiter.admit(ROUTE, "a4", claims=claims(1))
    await limiter.admit(ROUTE, "o6", claims=claims(6))
    assert await warnings() == 2


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.sampled_from([0.0, 0.5, 2.0, 7.0, 13.0, 40.0])),
        min_size=1,
        max_size=60,
    ),
    st.sampled_from([0.0, 5.0, 25.0]),
)
async def test_forgetting_never_lets_an_identity_past_its_limit(
    steps: list[tuple[int, float]], max_wait: float
) -> None:
    """Three tenants on 3/10s, time jumping past windows so that they are forgotten and come
    back, reservations left pending: in any 10s no tenant has more than 3 slots admitted."""
    clock = Clock()
    limiter, _ = build(clock, "3/10s", most=3, max_wait=max_wait)
    slots: dict[int, list[float]] = defaultdict(list)
    for index, (who, step) in enumerate(steps):
        clock.now += step
        try:
            admission = await limiter.admit(ROUTE, f"m{index}", claims=claims(who))
        except QuotaExceeded:
            continue
        assert not overflowed(admission.quota.key)
        slots[who].append(clock.now + admission.waited)
        assert limiter.held()["identities"] <= 3
    for times in slots.values():
        times.sort()
        for i, at in enumerate(times):
            assert sum(1 for t in times[: i + 1] if t > at - 10.0) <= 3


def spread(store: QuotaStore, clock: Clock) -> Limiter:
    """A limiter at 5/1m with the default identity bound, over ``store``."""
    return build(clock, "5/1m", most=1000, store=store)[0]


@pytest.mark.parametrize("kind", ["memory", "fallback"])
async def test_memory_stays_bounded_under_a_stream_of_distinct_identities(kind: str) -> None:
    """100,000 distinct tenants, one request each, 0.1s apart: the limiter and the store hold
    about the 600 of the last minute at any time, never the whole stream, and none overflows."""
    clock = Clock()
    shared = MemoryStore(clock)
    store: QuotaStore = (
        shared
        if kind == "memory"
        else FallbackStore(shared, cooldown=5.0, expected_replicas=2, clock=clock)
    )
    limiter = spread(store, clock)
    most = 0
    for n in range(100_000):
        clock.now += 0.1
        admission = await limiter.admit(ROUTE, f"m{n}", claims=claims(n))
        assert not overflowed(admission.quota.key)
        if n % 1000 == 999:
            held = limiter.held()
            counts = [held["identities"], held["quotas"], len(shared)]
            if isinstance(store, FallbackStore):
                counts.append(len(store.local))
            most = max(most, *counts)
    assert most <= 700


async def test_path_families_are_forgotten_and_stay_bounded() -> None:
    """100,000 distinct unmatched paths, 0.3s apart, without a token: about the 200 families of
    the last minute are held (of 256 at once), none lands on the overflow family, and the store
    stays as small."""
    clock = Clock()
    store = MemoryStore(clock)
    other = RouteSpec(OTHER, (), (Limit(1, 60.0),))
    limiter = Limiter(
        Throttle(max_wait=0.0, margin=0.0),
        (other,),
        {},
        store,
        Metrics(),
        clock=clock,
        sleep=clock.sleep,
    )
    most = 0
    for n in range(100_000):
        clock.now += 0.3
        admission = await limiter.admit(OTHER, f"m{n}", family=f"/api/junk{n}")
        assert ":other:/api/junk" in admission.quota.key
        if n % 1000 == 999:
            held = limiter.held()
            most = max(most, held["families"], held["quotas"], len(store))
    assert most <= 256


async def test_tidy_forgets_a_quiet_bursts_tables_without_waiting_for_a_request() -> None:
    """A burst of ten tenants, then quiet: a window later the tables still hold every one (nothing
    has called since); ``tidy`` empties the limiter and the store at once, and not earlier than
    their time."""
    clock = Clock()
    limiter, store = build(clock, "5/1s", most=100)
    for n in range(10):
        await limiter.admit(ROUTE, f"burst{n}", claims=claims(n))
    clock.now += 0.5
    limiter.tidy()  # still inside the window: kept
    assert (limiter.held()["identities"], limiter.held()["quotas"], len(store)) == (10, 10, 10)
    clock.now += 60.0
    assert (limiter.held()["identities"], len(store)) == (10, 10)  # nobody asked since
    limiter.tidy()
    assert limiter.held() == {"identities": 0, "families": 0, "quotas": 0}
    assert len(store) == 0


async def test_tidy_on_the_fallback_store_forgets_its_local_keys() -> None:
    """The fallback's in-process share drops the quotas whose time has passed on ``tidy``, with
    what the fallback keeps per quota beside them, and passes the tidy on to the shared store."""
    clock = Clock()
    shared = MemoryStore(clock)
    fallback = FallbackStore(shared, cooldown=1.0, expected_replicas=2, clock=clock)
    limiter, _ = build(clock, "5/1s", most=100, store=fallback)
    for n in range(4):
        await limiter.admit(ROUTE, f"burst{n}", claims=claims(n))
    assert len(fallback.local) == 4
    clock.now += 60.0
    limiter.tidy()
    assert (len(fallback.local), len(shared)) == (0, 0)
