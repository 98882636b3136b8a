"""The Redis script and ``schedule`` (as the in-process store uses it) decide alike, exactly.

A property over random quotas (one to three windows), reserves, deadlines, pauses, logs of
earlier admissions (reservations still to come among them) and times: ``admit.lua`` on a private
redis-server, given the same time through its ``now`` argument, returns the same decision as
``MemoryStore`` to the microsecond — admitted, wait, remaining, reset, pause and the fair share's
turn (the log's admissions and the new one each named for a caller, or for none), callers on
their way back included.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.quota.memory import MemoryStore
from proxy.quota.redis_store import RedisStore
from proxy.quota.schedule import Window
from proxy.quota.store import MICROS, Decision, Quota

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
KEY = "dp:{test:lua}"


@pytest.fixture(scope="module")
def redis(redis_proc: Any) -> Iterator[tuple[asyncio.Runner, RedisStore]]:
    """A loop for the module and the lean client on the session's private redis-server."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        store = RedisStore(f"redis://{redis_proc.host}:{redis_proc.port}/0", timeout=2.0)
        try:
            yield runner, store
        finally:
            runner.run(store.close())


@st.composite
def cases(draw: st.DrawFn) -> dict[str, Any]:
    widths = draw(st.lists(st.integers(1, 5_000), min_size=1, max_size=3, unique=True))
    windows = tuple(Window(draw(st.integers(1, 6)), width) for width in widths)
    widest = max(widths)
    now = draw(st.integers(10**6, 10**12))
    # A third of the cases hold a queue (reservations still to come, of a few callers), where the
    # fair share decides; a third hold admissions of the last two graces (the narrowest width /
    # 25) and a few reservations, where it waits for callers on their way back; the others spread
    # their log around now.
    shape = draw(st.sampled_from(["queued", "recent", "spread"]))
    queued = shape != "spread"
    if shape == "recent":
        log = draw(st.lists(st.integers(now - min(widths) // 25 - 1, now), max_size=14))
        log += draw(st.lists(st.integers(now + 1, now + 2 * widest), max_size=4))
    else:
        low = now if queued else now - 2 * widest
        log = draw(st.lists(st.integers(low, now + 2 * widest), max_size=20))
    callers = st.sampled_from(["ia", "ib", "ia", "ib", "ic", "ba", ""])
    return {
        "callers": [draw(callers) for _ in log],
        "caller": draw(callers),
        "windows": windows,
        "now": now,
        "log": log,
        "reserve": draw(st.sampled_from([0.0, 0.2, 0.5, 0.9])),
        "max_wait": draw(st.integers(0, 3 * widest)) if not queued else 10 * widest,
        "shadow": draw(st.booleans()) and not queued,
        "pause": draw(st.sampled_from([0, 0, 0, 1, widest, 3 * widest])),
        "not_before": draw(st.sampled_from([0, 0, 1, widest])),
    }


async def _in_redis(store: RedisStore, case: dict[str, Any]) -> Decision:
    quota = Quota(KEY, case["windows"])
    await store.client.execute_command("FLUSHDB")
    for window in quota.windows:
        for index, at in enumerate(case["log"]):
            member = _member(case["callers"][index], f"e{index}")
            await store.client.execute_command("ZADD", f"{KEY}:w{window.width}", at, member)
    if case["pause"]:
        await store.client.execute_command("SET", f"{KEY}:pause", case["now"] + case["pause"])
    return await store.admit(
        quota,
        _member(case["caller"], "new"),
        case["max_wait"] / MICROS,
        case["reserve"],
        case["shadow"],
        case["not_before"] / MICROS,
        at=case["now"],
    )


def _member(caller: str, name: str) -> str:
    return f"{caller}~{name}" if caller else name


async def _in_memory(case: dict[str, Any]) -> Decision:
    quota = Quota(KEY, case["windows"])
    store = MemoryStore(lambda: case["now"] / MICROS)
    await store.restore(
        quota,
        [
            (_member(caller, f"e{index}"), (case["now"] - at) / MICROS)
            for index, (caller, at) in enumerate(zip(case["callers"], case["log"], strict=True))
        ],
    )
    if case["pause"]:
        await store.pause(quota, case["pause"] / MICROS)
    return await store.admit(
        quota,
        _member(case["caller"], "new"),
        case["max_wait"] / MICROS,
        case["reserve"],
        case["shadow"],
        case["not_before"] / MICROS,
    )


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=cases())
def test_the_script_and_the_schedule_decide_alike(
    redis: tuple[asyncio.Runner, RedisStore], case: dict[str, Any]
) -> None:
    """Same quota, log and time: the same decision from admit.lua and from MemoryStore."""
    runner, store = redis
    expected = runner.run(_in_memory(case))
    assert runner.run(_in_redis(store, case)) == expected


def test_without_now_the_script_takes_the_servers_time(
    redis: tuple[asyncio.Runner, RedisStore],
) -> None:
    """No ``now`` argument: the decision is taken on the server's clock, as in production."""
    runner, store = redis
    quota = Quota(KEY, (Window(1, 60 * MICROS),))
    runner.run(store.client.execute_command("FLUSHDB"))
    first = runner.run(store.admit(quota, "a", 0.0, 0.0, False))
    second = runner.run(store.admit(quota, "b", 0.0, 0.0, False))
    assert first.admitted
    assert not second.admitted
    assert 59.0 <= second.wait <= 60.0
