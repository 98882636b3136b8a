"""A caller that goes away while the quota store is still answering its admission gives the slot
back: a real Redis behind a relay that holds its replies, so the script has run and taken the slot
when the caller is cancelled."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from proxy.config import Throttle, effective_routes, route_policies
from proxy.metrics import Metrics
from proxy.quota.limiter import Limiter, QuotaExceeded
from proxy.quota.redis_store import RedisStore
from proxy.throttle_config import RouteOverride
from proxy.units import parse_limit

ROUTE = "machines.list"


@dataclass
class HeldReplies:
    """A TCP relay to Redis that forwards commands at once and replies only while ``open``."""

    target: tuple[str, int]
    open: asyncio.Event = field(default_factory=asyncio.Event)
    #: set once a reply has reached the relay and is being held
    holding: asyncio.Event = field(default_factory=asyncio.Event)
    server: asyncio.Server | None = None
    #: replies let through before holding starts (each admission's reply is one read)
    passing: int = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)

        async def pump(
            source: asyncio.StreamReader, sink: asyncio.StreamWriter, held: bool
        ) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    if held and not self.open.is_set() and self.passing > 0:
                        self.passing -= 1
                    elif held and not self.open.is_set():
                        self.holding.set()
                        await self.open.wait()
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(
            pump(reader, upstream_writer, held=False),
            pump(upstream_reader, writer, held=True),
        )

    async def close(self) -> None:
        self.open.set()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def relay(redis_proc: Any) -> AsyncIterator[HeldReplies]:
    """A relay in front of the session's private redis-server, its database empty."""
    relay = HeldReplies((redis_proc.host, redis_proc.port))
    relay.open.set()
    store = RedisStore(f"redis://{redis_proc.host}:{redis_proc.port}/0", timeout=2.0)
    await store.client.execute_command("FLUSHDB")
    await store.close()
    yield relay
    await relay.close()


def limiter(store: RedisStore, limit: str) -> Limiter:
    route = RouteOverride(ROUTE, None, (parse_limit(limit),), None, None)
    throttle = Throttle(max_wait=0.0, margin=0.0, routes=(route,))
    return Limiter(throttle, effective_routes(throttle), route_policies(throttle), store, Metrics())


async def test_a_caller_cancelled_inside_the_store_round_trip_gives_its_slot_back(
    relay: HeldReplies,
) -> None:
    """Cancelled after Redis took its slot but before the reply came, a caller's slot is released."""
    port = await relay.start()
    store = RedisStore(f"redis://127.0.0.1:{port}/0", timeout=5.0)
    quota = limiter(store, "1/1m")
    try:
        await quota.warm()
        relay.open.clear()
        first = asyncio.create_task(quota.admit(ROUTE, "first"))
        await asyncio.wait_for(relay.holding.wait(), 5)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        relay.open.set()
        # The release goes out after the held reply, on the same connection.
        second = await asyncio.wait_for(quota.admit(ROUTE, "second"), 5)
        assert second.outcome == "admitted"
        # The limit holds: the one slot of the minute is the second caller's now.
        with pytest.raises(QuotaExceeded):
            await quota.admit(ROUTE, "third")
    finally:
        await quota.close()


async def test_a_batch_cancelled_inside_the_store_round_trip_gives_every_slot_back(
    relay: HeldReplies,
) -> None:
    """Cancelled while its second inner request is being admitted, a batch gives both slots back."""
    port = await relay.start()
    store = RedisStore(f"redis://127.0.0.1:{port}/0", timeout=5.0)
    quota = limiter(store, "2/1m")
    try:
        await quota.warm()
        relay.passing = 1
        relay.open.clear()
        batch = asyncio.create_task(quota.admit_batch([ROUTE, ROUTE], "batch"))
        await asyncio.wait_for(relay.holding.wait(), 5)
        batch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await batch
        relay.open.set()
        again = await asyncio.wait_for(quota.admit_batch([ROUTE, ROUTE], "again"), 5)
        assert (again.outcome, again.count) == ("admitted", 2)
    finally:
        await quota.close()
