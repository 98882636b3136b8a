"""A store that comes back empty, under saturating load: the upstream never sees one request too many.

Three proxy processes share 30/2s on a private redis-server; clients keep every replica saturated
while Redis is stopped and started again empty, twice. The simulator answers 429 the moment any
sliding window of the API's own 2 s holds more than 30 admissions, so every over-admission by the
replicas together shows there as an upstream 429: the test pins that count at 0.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.faultkit import Answer, sample
from tests.integration.test_quota_replicas import (
    FALLBACK_WARNING,
    RECOVERED,
    Cluster,
    cluster,
    metrics,
    saturate,
    stats,
)
from tests.support.redis import RedisServer

__all__ = ["cluster"]  # the fixture, shared with the replicas' tests

pytestmark = pytest.mark.slow

LIMIT = 30
REPLICAS = 3
CLIENTS_PER_REPLICA = 6
#: Seconds of load before the first stop, Redis down, up again before the next stop, at the end.
WARM, DOWN, UP, TAIL = 2.5, 1.5, 3.0, 3.0
LOAD_SECONDS = WARM + DOWN + UP + DOWN + TAIL


async def test_a_store_restarted_empty_twice_admits_nothing_twice(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    """Redis stopped and restarted empty twice under saturation: 0 upstream 429s, and each
    replica fell back and came back (a lost connection counts as a fall: callers all waiting on
    reservations may not call the store until it is back, empty)."""
    simulator = await cluster.simulator(f"{LIMIT}/2s")
    replicas = await cluster.replicas(
        REPLICAS,
        simulator,
        f"{{store: '{redis_server.url}', namespace: r1, max_wait: 5s, margin: 100ms,"
        " store_timeout: 50ms, fallback: {expected_replicas: 3, cooldown: 500ms},"
        f" routes: [{{name: machines.list, limits: ['{LIMIT}/2s']}}]}}",
    )
    answers: list[Answer] = []
    async with aiohttp.ClientSession() as session:
        end = time.monotonic() + LOAD_SECONDS
        load = asyncio.gather(
            *(
                saturate(session, f"{replica.url}/api/machines", end, answers)
                for replica in replicas
                for _ in range(CLIENTS_PER_REPLICA)
            )
        )
        try:
            async with asyncio.timeout(LOAD_SECONDS + 20):
                await asyncio.sleep(WARM)
                for _ in range(2):
                    await redis_server.stop()
                    await asyncio.sleep(DOWN)
                    await redis_server.start()  # no persistence: it comes back empty
                    await asyncio.sleep(UP)
                await load
        finally:
            load.cancel()
        upstream = await stats(session, simulator)
        texts = [await metrics(session, replica) for replica in replicas]

    assert upstream["throttled"] == 0, upstream
    assert upstream["max_in_window"][f"{LIMIT}/2s"] <= LIMIT, upstream
    kinds = {(a.status, a.proxy_error) for a in answers}
    assert kinds <= {(200, None), (429, "TooManyRequests")}, kinds
    # Enough went through to mean something: at least half the limit over the whole run.
    assert upstream["admitted"] >= 0.5 * LIMIT * LOAD_SECONDS / 2, upstream
    for replica, text in zip(replicas, texts, strict=True):
        assert (sample(text, "defender_proxy_quota_store_fallbacks_total") or 0) >= 1
        events = [line["event"] for line in replica.process.lines]
        assert FALLBACK_WARNING in events, events[-20:]
        assert RECOVERED in events[events.index(FALLBACK_WARNING) :], events[-20:]
