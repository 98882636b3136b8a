"""The circuit breaker: a dead Redis costs one store timeout, then the local share takes over."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest

from proxy.quota.fallback import FallbackStore
from proxy.quota.redis_store import RedisStore
from proxy.quota.store import Decision, Quota, StoreUnavailable, as_windows
from tests.support.ports import free_port
from tests.support.redis import RedisServer


class Clock:
    """A hand-driven clock for the breaker and the local share."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _store(url: str, clock: Clock, changes: list[bool]) -> FallbackStore[RedisStore]:
    return FallbackStore(
        RedisStore(url, timeout=0.05),
        cooldown=5.0,
        expected_replicas=3,
        on_change=changes.append,
        clock=clock,
    )


QUOTA = Quota("dp:{test:fallback}", as_windows([(9, 60.0)], 0.0))


async def test_dead_store_falls_back_to_the_local_share() -> None:
    """With Redis unreachable each replica admits a third of the limit, and says so once."""
    clock = Clock()
    changes: list[bool] = []
    store = _store(f"redis://127.0.0.1:{free_port()}/0", clock, changes)
    admitted = [(await store.admit(QUOTA, f"m{i}", 0.0, 0.0, False)).admitted for i in range(4)]
    assert admitted == [True, True, True, False]
    assert changes == [True]
    assert store.in_fallback
    await store.close()


async def test_open_breaker_does_not_call_the_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """While the breaker is open, admissions do not wait on the dead store at all."""
    clock = Clock()
    changes: list[bool] = []
    store = _store(f"redis://127.0.0.1:{free_port()}/0", clock, changes)
    await store.admit(QUOTA, "first", 0.0, 0.0, False)
    calls: list[str] = []
    shared_admit = store.shared.admit

    async def counted(
        quota: Quota,
        member: str,
        max_wait: float,
        reserve: float,
        shadow: bool,
        not_before: float = 0.0,
    ) -> Decision:
        calls.append(member)
        return await shared_admit(quota, member, max_wait, reserve, shadow, not_before)

    monkeypatch.setattr(store.shared, "admit", counted)
    for i in range(50):
        await store.admit(QUOTA, f"m{i}", 0.0, 0.0, False)
    assert calls == []
    await store.close()


async def test_breaker_returns_to_the_shared_store(redis_proc: Any) -> None:
    """After the cooldown the shared store is tried again and, answering, takes over."""
    clock = Clock()
    changes: list[bool] = []
    store = _store(f"redis://{redis_proc.host}:{redis_proc.port}/0", clock, changes)
    await store.shared.client.execute_command("FLUSHDB")
    store._failed(
        StoreUnavailable("ConnectionError", "simulated")
    )  # as if the last call had failed
    assert store.in_fallback
    await store.admit(QUOTA, "during", 0.0, 0.0, False)
    assert await store.shared.client.execute_command("EXISTS", "dp:{test:fallback}:w60000000") == 0
    clock.now += 5.0
    decision = await store.admit(QUOTA, "after", 0.0, 0.0, False)
    assert decision.admitted
    assert (store.in_fallback, changes) == (False, [True, False])
    assert await store.shared.client.execute_command("EXISTS", "dp:{test:fallback}:w60000000") == 1
    await store.close()


async def test_a_call_from_before_the_failure_does_not_close_the_breaker() -> None:
    """Only a call that began after the breaker opened may close it."""
    clock = Clock()
    changes: list[bool] = []
    store = _store(f"redis://127.0.0.1:{free_port()}/0", clock, changes)
    began = clock.now
    clock.now += 0.01
    store._failed(StoreUnavailable("TimeoutError", ""))
    store._succeeded(began)
    assert (store.in_fallback, changes) == (True, [True])
    store._succeeded(clock.now)
    assert (store.in_fallback, changes) == (False, [True, False])
    await store.close()


async def test_fallback_counts_what_the_replica_already_sent(redis_proc: Any) -> None:
    """Admissions taken from Redis are mirrored, so the local share starts from them."""
    clock = Clock()
    changes: list[bool] = []
    store = _store(f"redis://{redis_proc.host}:{redis_proc.port}/0", clock, changes)
    await store.shared.client.execute_command("FLUSHDB")
    for i in range(3):
        assert (await store.admit(QUOTA, f"shared{i}", 0.0, 0.0, False)).admitted
    store._failed(StoreUnavailable("ConnectionError", "simulated"))
    # The local share is 9 // 3 = 3, and this replica already sent 3 in the window.
    assert not (await store.admit(QUOTA, "local", 0.0, 0.0, False)).admitted
    await store.close()


async def test_fallback_starts_from_the_shared_headroom(redis_proc: Any) -> None:
    """A fallback takes this replica's share of what the shared quota had left, not a full share."""
    clock = Clock()
    changes: list[bool] = []
    store = _store(f"redis://{redis_proc.host}:{redis_proc.port}/0", clock, changes)
    await store.shared.client.execute_command("FLUSHDB")
    other = RedisStore(f"redis://{redis_proc.host}:{redis_proc.port}/0", timeout=1.0)
    for i in range(5):  # the other replicas used 5 of 9
        await other.admit(QUOTA, f"other{i}", 0.0, 0.0, False)
    await other.close()
    last = await store.admit(QUOTA, "mine", 0.0, 0.0, False)
    assert last.remaining == (3,)
    store._failed(StoreUnavailable("ConnectionError", "simulated"))
    # Three left for everybody: this replica's share is one more (a full local share would be two).
    local = [(await store.admit(QUOTA, f"l{i}", 0.0, 0.0, False)).admitted for i in range(3)]
    assert local == [True, False, False]
    await store.close()


async def test_a_probe_cancelled_mid_write_back_leaves_the_next_call_to_probe(
    redis_server: RedisServer,
) -> None:
    """The caller of the probe goes away while Redis has not answered its write-back: the
    breaker's next call after the cooldown probes again and the shared quota comes back."""
    clock = Clock()
    changes: list[bool] = []
    # A timeout far beyond the test's steps: the probe is cancelled, never timed out.
    store = FallbackStore(
        RedisStore(redis_server.url, timeout=10.0),
        cooldown=5.0,
        expected_replicas=3,
        on_change=changes.append,
        clock=clock,
    )
    assert await store.warm()
    assert (await store.admit(QUOTA, "before", 0.0, 0.0, False)).admitted
    store._failed(StoreUnavailable("ConnectionError", "simulated"))
    clock.now += 5.0
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        probe = asyncio.ensure_future(store.admit(QUOTA, "probe", 0.0, 0.0, False))
        for _ in range(100):  # until the probe is waiting on its write-back
            if store._probing:
                break
            await asyncio.sleep(0)
        assert store._probing
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    clock.now += 5.0
    assert (await store.admit(QUOTA, "after", 0.0, 0.0, False)).admitted
    assert (store.in_fallback, changes) == (False, [True, False])
    await store.close()


async def test_a_pause_outlives_a_store_restarted_empty(redis_server: RedisServer) -> None:
    """Redis restarted empty during an upstream's Retry-After: the replica that saw the 429
    writes the pause back with its admissions, so another replica does not admit into it."""
    clock = Clock()
    changes: list[bool] = []
    seen = _store(redis_server.url, clock, changes)
    assert await seen.warm()
    assert (await seen.admit(QUOTA, "before", 0.0, 0.0, False)).admitted
    await seen.pause(QUOTA, 30.0)
    await redis_server.stop()
    await redis_server.start()  # no persistence: it comes back empty, the pause gone with it
    assert not (await seen.admit(QUOTA, "lost", 0.0, 0.0, False)).admitted
    assert changes == [True]
    clock.now += 5.0  # the cooldown: the next call writes back, then uses Redis again
    assert not (await seen.admit(QUOTA, "probe", 0.0, 0.0, False)).admitted
    assert changes == [True, False]
    other = _store(redis_server.url, Clock(), [])
    assert await other.warm()
    decision = await other.admit(QUOTA, "other", 0.0, 0.0, False)
    assert not decision.admitted
    assert 20.0 < decision.paused <= 30.0
    await seen.close()
    await other.close()


async def test_a_fallback_honours_a_pause_another_replica_set(redis_server: RedisServer) -> None:
    """A replica told by Redis that the route is paused (another replica saw the 429) keeps to
    that pause when Redis goes away, instead of admitting from its local share at once."""
    clock = Clock()
    seen = _store(redis_server.url, clock, [])
    told = _store(redis_server.url, clock, [])
    assert await seen.warm()
    assert await told.warm()
    await seen.pause(QUOTA, 30.0)
    assert (await told.admit(QUOTA, "told", 0.0, 0.0, False)).paused > 20.0
    await redis_server.stop()
    decision = await told.admit(QUOTA, "during", 0.0, 0.0, False)
    assert told.in_fallback
    assert not decision.admitted
    assert decision.paused > 20.0
    await seen.close()
    await told.close()


async def test_a_fallback_after_a_reload_seeds_window_by_window(redis_server: RedisServer) -> None:
    """A fallback that begins after a reload changed a quota's limits seeds from what the last
    shared decision saw used, window by window of the same width (a new window from nothing)."""
    clock = Clock()
    store = _store(redis_server.url, clock, [])
    before = Quota("dp:{test:reload}", as_windows([(9, 60.0)], 0.0))
    other = RedisStore(redis_server.url, timeout=1.0)
    for i in range(5):  # the other replicas used 5 of 9
        await other.admit(before, f"other{i}", 0.0, 0.0, False)
    await other.close()
    assert (await store.admit(before, "mine", 0.0, 0.0, False)).remaining == (3,)
    after = Quota(before.key, as_windows([(12, 60.0), (100, 3600.0)], 0.0))
    await redis_server.stop()
    local = [(await store.admit(after, f"l{i}", 0.0, 0.0, False)).admitted for i in range(3)]
    assert store.in_fallback
    # 6 of the minute used, 6 of the new 12 left: this replica's share of them is 2, of its 4.
    assert local == [True, True, False]
    await store.close()
