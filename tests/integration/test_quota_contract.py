"""One contract for every quota store: the in-process store, a real Redis through both clients,
and the circuit breaker over the in-process store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from proxy.quota import resp
from proxy.quota.fallback import FallbackStore
from proxy.quota.memory import MemoryStore
from proxy.quota.redis_store import RedisStore
from proxy.quota.store import Quota, QuotaStore, as_windows


class Clock:
    """A hand-driven clock for the in-process store."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


#: The hand-driven clock of each in-process store the fixture made, by the store's id.
CLOCKS: dict[int, Clock] = {}


async def later(store: QuotaStore, seconds: float) -> None:
    """Let ``seconds`` pass for ``store``: its hand-driven clock moves, or Redis's own runs."""
    clock = CLOCKS.get(id(store))
    if clock is not None:
        clock.now += seconds
    else:
        await asyncio.sleep(seconds)


@pytest.fixture(params=["memory", "redis", "redis-py", "fallback-over-memory"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[QuotaStore]:
    """Each store in turn; Redis is a private redis-server started for the session, reached by
    the lean client and (a URL with an option) by redis-py."""
    if request.param in ("memory", "fallback-over-memory"):
        clock = Clock()
        made: QuotaStore = MemoryStore(clock)
        if request.param == "fallback-over-memory":
            made = FallbackStore(made, cooldown=5.0, expected_replicas=1, clock=clock)
        CLOCKS[id(made)] = clock
        yield made
        del CLOCKS[id(made)]
        return
    proc: Any = request.getfixturevalue("redis_proc")
    options = "?client_name=contract" if request.param == "redis-py" else ""
    redis_store = RedisStore(f"redis://{proc.host}:{proc.port}/0{options}", timeout=2.0)
    assert isinstance(redis_store.client, resp.Client) == (request.param == "redis")
    await redis_store.client.execute_command("FLUSHDB")
    yield redis_store
    await redis_store.close()


def quota(name: str, *limits: tuple[int, float], margin: float = 0.0) -> Quota:
    return Quota(f"dp:{{test:{name}}}", as_windows(limits, margin))


# Redis runs on its own clock; a few ms pass between calls.
SLACK = 0.05


class TestQuotaStoreContract:
    """Behaviour every store must share."""

    async def test_admits_up_to_the_limit_then_reserves_the_next_slot(
        self, store: QuotaStore
    ) -> None:
        """L requests are admitted at once; the next is given the slot when the first leaves."""
        q = quota("a", (3, 10.0))
        waits = [(await store.admit(q, f"m{i}", 60.0, 0.0, False)).wait for i in range(4)]
        assert waits[:3] == [0.0, 0.0, 0.0]
        assert 10.0 - SLACK <= waits[3] <= 10.0

    async def test_refuses_beyond_the_deadline_and_logs_nothing(self, store: QuotaStore) -> None:
        """Past max_wait the request is refused with the wait it would need, and not counted."""
        q = quota("b", (2, 30.0))
        for i in range(2):
            assert (await store.admit(q, f"m{i}", 5.0, 0.0, False)).admitted
        first = await store.admit(q, "x", 5.0, 0.0, False)
        second = await store.admit(q, "y", 5.0, 0.0, False)
        assert not first.admitted
        assert not second.admitted
        assert 30.0 - SLACK <= first.wait <= 30.0
        assert abs(second.wait - first.wait) <= SLACK
        assert first.remaining == (0,)

    async def test_every_window_is_taken_in_one_step(self, store: QuotaStore) -> None:
        """With a per-second and a per-ten-seconds limit, the stricter one at each point decides."""
        q = quota("c", (2, 1.0), (3, 10.0))
        waits = [(await store.admit(q, f"m{i}", 60.0, 0.0, False)).wait for i in range(4)]
        assert waits[0] == waits[1] == 0.0
        assert 1.0 - SLACK <= waits[2] <= 1.0  # the per-second window
        assert 10.0 - SLACK <= waits[3] <= 10.0  # the per-ten-seconds window
        decision = await store.admit(q, "probe", 0.0, 0.0, False)
        assert decision.remaining == (0, 0)

    async def test_margin_widens_every_window(self, store: QuotaStore) -> None:
        """The timing margin is added to the window, so slots come back margin later."""
        q = quota("d", (1, 5.0), margin=0.5)
        await store.admit(q, "m0", 60.0, 0.0, False)
        wait = (await store.admit(q, "m1", 60.0, 0.0, False)).wait
        assert 5.5 - SLACK <= wait <= 5.5

    async def test_bulk_leaves_the_reserve_to_interactive(self, store: QuotaStore) -> None:
        """Bulk may fill 80% of a window; the rest stays for interactive requests."""
        q = quota("e", (10, 60.0))
        bulk = [(await store.admit(q, f"b{i}", 0.0, 0.2, False)).admitted for i in range(10)]
        assert bulk == [True] * 8 + [False] * 2
        interactive = [(await store.admit(q, f"i{i}", 0.0, 0.0, False)).admitted for i in range(3)]
        assert interactive == [True, True, False]

    async def test_interactive_is_not_queued_behind_bulk(self, store: QuotaStore) -> None:
        """Bulk reservations waiting in the queue do not delay an interactive request."""
        q = quota("f", (10, 60.0))
        for i in range(8):
            await store.admit(q, f"b{i}", 120.0, 0.2, False)
        queued = await store.admit(q, "queued", 120.0, 0.2, False)
        assert queued.admitted
        assert queued.wait > 50
        urgent = await store.admit(q, "isolate", 0.0, 0.0, False)
        assert urgent.admitted
        assert urgent.wait == 0.0

    async def test_release_gives_a_reservation_back(self, store: QuotaStore) -> None:
        """A caller that leaves before its slot frees it for the next one."""
        q = quota("g", (1, 10.0))
        await store.admit(q, "m0", 60.0, 0.0, False)
        reserved = await store.admit(q, "m1", 60.0, 0.0, False)
        assert 10.0 - SLACK <= reserved.wait <= 10.0
        await store.release(q, "m1")
        again = await store.admit(q, "m2", 60.0, 0.0, False)
        assert 10.0 - SLACK <= again.wait <= 10.0

    async def test_pause_holds_every_admission(self, store: QuotaStore) -> None:
        """A pause delays the next admission to its end, and a shorter pause never shortens it."""
        q = quota("h", (100, 60.0))
        left = await store.pause(q, 20.0)
        assert 20.0 - SLACK <= left <= 20.0
        shorter = await store.pause(q, 5.0)
        assert shorter >= 20.0 - SLACK
        decision = await store.admit(q, "m0", 60.0, 0.0, False)
        assert 20.0 - 2 * SLACK <= decision.wait <= 20.0
        assert decision.paused >= 20.0 - 2 * SLACK

    async def test_shadow_logs_now_and_only_reports(self, store: QuotaStore) -> None:
        """In shadow mode nothing is refused or delayed, but the decision is reported."""
        q = quota("i", (2, 30.0))
        decisions = [await store.admit(q, f"m{i}", 1.0, 0.0, True) for i in range(4)]
        assert [d.admitted for d in decisions] == [True, True, False, False]
        assert decisions[2].wait > 1.0
        assert decisions[3].remaining == (0,)

    async def test_remaining_and_reset_report_headroom(self, store: QuotaStore) -> None:
        """Remaining counts down, and reset tells when the oldest admission leaves."""
        q = quota("j", (5, 60.0))
        decisions = [await store.admit(q, f"m{i}", 0.0, 0.0, False) for i in range(3)]
        assert [d.remaining for d in decisions] == [(4,), (3,), (2,)]
        assert 60.0 - SLACK <= decisions[-1].reset[0] <= 60.0

    async def test_quotas_are_independent(self, store: QuotaStore) -> None:
        """Two routes do not share windows."""
        a, b = quota("k1", (1, 60.0)), quota("k2", (1, 60.0))
        assert (await store.admit(a, "m", 0.0, 0.0, False)).admitted
        assert (await store.admit(b, "m", 0.0, 0.0, False)).admitted
        assert not (await store.admit(a, "n", 0.0, 0.0, False)).admitted

    async def test_a_slot_is_never_before_not_before(self, store: QuotaStore) -> None:
        """not_before pushes the slot back even in an empty window."""
        q = quota("l", (5, 60.0))
        decision = await store.admit(q, "m", 10.0, 0.0, False, 4.0)
        assert decision.admitted
        assert 4.0 - SLACK <= decision.wait <= 4.0 + SLACK
        late = await store.admit(q, "n", 3.0, 0.0, False, 4.0)
        assert not late.admitted

    async def test_restored_admissions_count_from_their_age(self, store: QuotaStore) -> None:
        """Admissions written back 1 s and 2 s ago fill the window; the next slot is 8 s away."""
        q = quota("m", (3, 10.0))
        await store.restore(q, [("a", 1.0), ("b", 2.0)])
        assert (await store.admit(q, "c", 0.0, 0.0, False)).admitted
        nxt = await store.admit(q, "d", 60.0, 0.0, False)
        assert 8.0 - SLACK <= nxt.wait <= 8.0 + SLACK

    async def test_restoring_twice_counts_once(self, store: QuotaStore) -> None:
        """The same members written back twice, or already held, are counted once."""
        q = quota("n", (3, 10.0))
        await store.admit(q, "held", 0.0, 0.0, False)
        await store.restore(q, [("held", 5.0), ("a", 1.0)])
        await store.restore(q, [("held", 5.0), ("a", 1.0)])
        decision = await store.admit(q, "b", 0.0, 0.0, False)
        assert decision.admitted
        assert decision.remaining == (0,)
        # The oldest is "a" (1 s ago): "held" kept its own time, not the 5 s ago written back.
        assert 9.0 - SLACK <= decision.reset[0] <= 9.0 + SLACK

    async def test_restored_admissions_older_than_the_window_are_left_out(
        self, store: QuotaStore
    ) -> None:
        """A written-back admission that already left its window takes no slot."""
        q = quota("o", (1, 10.0))
        await store.restore(q, [("old", 11.0)])
        assert (await store.admit(q, "m", 0.0, 0.0, False)).admitted


A, B, BULK = "iaaaaaaaaaaaaaaa", "ibbbbbbbbbbbbbbb", "bccccccccccccccc"


class TestFairShareContract:
    """The fair share, decided alike by every store (the Redis script ports the rule)."""

    async def test_callers_take_the_queue_in_turns(self, store: QuotaStore) -> None:
        """A caller that holds a reservation and has used as much as another caller is deferred
        to its own earliest slot, without taking one; the other may catch up to it, not pass it."""
        q = quota("fair", (1, 10.0))
        assert (await store.admit(q, f"{A}~now", 300.0, 0.0, False)).wait == 0.0
        # Alone in the queue, A reserves as far ahead as it likes.
        first = await store.admit(q, f"{A}~1", 300.0, 0.0, False)
        second = await store.admit(q, f"{A}~2", 300.0, 0.0, False)
        assert first.admitted
        assert second.admitted
        assert first.turn == second.turn == 0.0
        # B arrives: it holds none, so it reserves behind A's two.
        b1 = await store.admit(q, f"{B}~1", 300.0, 0.0, False)
        assert b1.admitted
        assert 30.0 - SLACK <= b1.wait <= 30.0
        # A has 3 in the window, B 1: A waits for its turn, which is its own earliest slot.
        a3 = await store.admit(q, f"{A}~3", 300.0, 0.0, False)
        assert not a3.admitted
        assert 10.0 - SLACK <= a3.turn <= 10.0
        assert 40.0 - SLACK <= a3.wait <= 40.0
        # B catches up: it may reserve until it has used as much as A, then it waits too.
        assert (await store.admit(q, f"{B}~2", 300.0, 0.0, False)).admitted
        assert (await store.admit(q, f"{B}~3", 300.0, 0.0, False)).admitted
        b4 = await store.admit(q, f"{B}~4", 300.0, 0.0, False)
        assert not b4.admitted
        assert 30.0 - SLACK <= b4.turn <= 30.0
        # A deferred request took nothing: the next free slot is still the one after B's third.
        untagged = await store.admit(q, "plain", 300.0, 0.0, False)
        assert untagged.admitted
        assert untagged.turn == 0.0
        assert 60.0 - SLACK <= untagged.wait <= 60.0

    async def test_a_free_slot_and_another_priority_defer_nobody(self, store: QuotaStore) -> None:
        """A caller alone takes free slots and reserves as it likes, and a bulk caller's
        reservations do not hold back an interactive one."""
        q = quota("free", (2, 10.0))
        for i in range(2):
            assert (await store.admit(q, f"{A}~{i}", 300.0, 0.0, False)).wait == 0.0
        assert (await store.admit(q, f"{A}~2", 300.0, 0.0, False)).admitted
        assert (await store.admit(q, f"{BULK}~1", 300.0, 0.0, False)).admitted
        # A holds 1, the bulk caller 1: another priority, so A reserves again.
        a3 = await store.admit(q, f"{A}~3", 300.0, 0.0, False)
        assert a3.admitted
        assert a3.turn == 0.0
        # An interactive B reserves, and again (2 against A's 4); then A waits its turn.
        assert (await store.admit(q, f"{B}~1", 300.0, 0.0, False)).admitted
        assert (await store.admit(q, f"{B}~2", 300.0, 0.0, False)).admitted
        assert (await store.admit(q, f"{A}~4", 300.0, 0.0, False)).turn > 0

    async def test_a_caller_holding_none_waits_for_one_that_used_less(
        self, store: QuotaStore
    ) -> None:
        """A caller that holds no reservation but has used more waits while a caller that has used
        less holds one, until that reservation is due; once level, it takes its slot."""
        q = quota("least", (5, 10.0))
        for i in range(3):
            assert (await store.admit(q, f"{A}~{i}", 300.0, 0.0, False)).wait == 0.0
        assert (await store.admit(q, f"{B}~0", 300.0, 0.0, False)).wait == 0.0
        assert (await store.admit(q, "plain", 300.0, 0.0, False)).wait == 0.0
        b1 = await store.admit(q, f"{B}~1", 300.0, 0.0, False)
        assert b1.admitted
        assert 10.0 - SLACK <= b1.wait <= 10.0
        # A holds nothing and has used 3; B has used 2 and holds a reservation.
        a3 = await store.admit(q, f"{A}~3", 300.0, 0.0, False)
        assert not a3.admitted
        assert 10.0 - SLACK <= a3.turn <= 10.0
        # B takes its turn; level with A, A takes the next slot.
        assert (await store.admit(q, f"{B}~2", 300.0, 0.0, False)).admitted
        again = await store.admit(q, f"{A}~3", 300.0, 0.0, False)
        assert again.admitted
        assert again.turn == 0.0

    async def test_a_caller_on_its_way_back_is_waited_for_a_grace(self, store: QuotaStore) -> None:
        """With the window full, a caller that has used more waits for one that has used less and
        was admitted a moment ago, for 2 % of the narrowest window; after that it reserves."""
        q = quota("back", (5, 30.0))
        for i in range(3):
            assert (await store.admit(q, f"{A}~{i}", 300.0, 0.0, False)).wait == 0.0
        assert (await store.admit(q, "plain", 300.0, 0.0, False)).wait == 0.0
        assert (await store.admit(q, f"{B}~0", 300.0, 0.0, False)).wait == 0.0
        a3 = await store.admit(q, f"{A}~3", 300.0, 0.0, False)
        assert not a3.admitted
        assert 0.0 < a3.turn <= 0.6
        # B did not come back within its grace: A reserves the next slot.
        await later(store, a3.turn + 0.05)
        again = await store.admit(q, f"{A}~3", 300.0, 0.0, False)
        assert again.admitted
        assert again.turn == 0.0
        assert 30.0 - 1.0 <= again.wait <= 30.0

    async def test_a_deferral_past_the_deadline_is_a_refusal(self, store: QuotaStore) -> None:
        """A request whose slot lies beyond its deadline is refused, never deferred."""
        q = quota("late", (1, 10.0))
        await store.admit(q, f"{A}~0", 300.0, 0.0, False)
        await store.admit(q, f"{A}~1", 300.0, 0.0, False)
        await store.admit(q, f"{B}~1", 300.0, 0.0, False)
        late = await store.admit(q, f"{A}~2", 25.0, 0.0, False)
        assert not late.admitted
        assert late.turn == 0.0

    async def test_a_released_reservation_no_longer_counts(self, store: QuotaStore) -> None:
        """A reservation given back (its caller left) stops counting against its caller."""
        q = quota("released", (1, 10.0))
        await store.admit(q, f"{A}~0", 300.0, 0.0, False)
        await store.admit(q, f"{A}~1", 300.0, 0.0, False)
        await store.admit(q, f"{B}~1", 300.0, 0.0, False)
        assert (await store.admit(q, f"{A}~2", 300.0, 0.0, False)).turn > 0
        await store.release(q, f"{A}~1")
        again = await store.admit(q, f"{A}~2", 300.0, 0.0, False)
        assert again.admitted
        assert again.turn == 0.0
