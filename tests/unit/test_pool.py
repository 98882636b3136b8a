"""The pool over a scripted in-memory upstream: resending, waiting for a connection, the edge."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from proxy.errors import UpstreamError
from proxy.upstream import IDEMPOTENT, Pool, Response
from tests.faultkit import until
from tests.memory import OK, ScriptedUpstream

MakePool = Callable[..., Pool]


@pytest.fixture
async def make_pool() -> AsyncIterator[MakePool]:
    """Pools to an in-memory upstream; each is closed afterwards."""
    pools: list[Pool] = []

    def build(upstream: ScriptedUpstream, **changes: Any) -> Pool:
        options: dict[str, Any] = {
            "ssl_context": None,
            "connect_timeout": 1.0,
            "read_timeout": 2.0,
            "pool_timeout": 5.0,
            "max_connections": 10,
            "keepalive": 30.0,
            "max_header_size": 16384,
            "connector": upstream,
        }
        options.update(changes)
        pool = Pool("http://upstream.test", **options)
        pools.append(pool)
        return pool

    yield build
    for pool in pools:
        await pool.close()


def first_answered_then_closed(connection: int, request: int, head: bytes) -> bytes | None:
    """Each connection answers its first request, then closes on the next without a word."""
    return OK if request == 0 else None


async def fetch(pool: Pool, method: str = "GET") -> tuple[int, bytes]:
    """One bodiless exchange, read to the end and released."""
    response = await pool.request(method, "/api/machines", [], None, False)
    try:
        parts = []
        while chunk := await response.read():
            parts.append(chunk)
        return response.status, b"".join(parts)
    finally:
        response.release()


def test_idempotent_methods_are_rfc_9110s() -> None:
    """Only the methods RFC 9110 §9.2.2 calls idempotent may ever be resent."""
    assert frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"}) == IDEMPOTENT


@pytest.mark.parametrize("method", ["GET", "DELETE", "OPTIONS"])
async def test_idempotent_request_on_a_dead_kept_connection_is_resent_once(
    make_pool: MakePool, method: str
) -> None:
    """An idempotent bodiless request whose kept connection died unanswered goes again, fresh."""
    upstream = ScriptedUpstream(first_answered_then_closed)
    pool = make_pool(upstream)
    assert await fetch(pool) == (200, b"ok")
    assert await fetch(pool, method) == (200, b"ok")
    assert [(c, h.split(b" ", 1)[0]) for c, h in upstream.heads] == [
        (0, b"GET"),
        (0, method.encode()),
        (1, method.encode()),
    ]


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_non_idempotent_request_on_a_dead_kept_connection_is_not_resent(
    make_pool: MakePool, method: str
) -> None:
    """A bodiless POST whose kept connection died unanswered is a 502 reset, sent only once."""
    upstream = ScriptedUpstream(first_answered_then_closed)
    pool = make_pool(upstream)
    assert await fetch(pool) == (200, b"ok")
    with pytest.raises(UpstreamError) as caught:
        await fetch(pool, method)
    assert (caught.value.status, caught.value.code, caught.value.kind) == (
        502,
        "BadGateway",
        "reset",
    )
    assert caught.value.cause == "the upstream closed the connection before answering"
    assert [h.split(b" ", 1)[0] for _, h in upstream.heads] == [b"GET", method.encode()]
    assert upstream.connections == 1
    assert pool.open_connections == 0


async def test_a_fresh_connection_closed_unanswered_is_not_resent(make_pool: MakePool) -> None:
    """A GET on a new connection that closes unanswered is a 502: only reused ones are retried."""
    upstream = ScriptedUpstream(lambda connection, request, head: None)
    pool = make_pool(upstream)
    with pytest.raises(UpstreamError) as caught:
        await fetch(pool)
    assert caught.value.kind == "reset"
    assert upstream.connections == 1


async def test_a_second_failure_is_not_resent_again(make_pool: MakePool) -> None:
    """When the resent request fails too, the caller gets the 502: one resend at most."""
    upstream = ScriptedUpstream(lambda c, r, h: OK if (c, r) == (0, 0) else None)
    pool = make_pool(upstream)
    assert await fetch(pool) == (200, b"ok")
    with pytest.raises(UpstreamError) as caught:
        await fetch(pool)
    assert caught.value.kind == "reset"
    assert len(upstream.heads) == 3


async def held(pool: Pool) -> Response:
    """A response whose connection the test keeps busy until it releases it."""
    return await pool.request("GET", "/slow", [], None, False)


async def test_no_free_connection_within_pool_timeout_is_a_503_with_retry_after(
    make_pool: MakePool,
) -> None:
    """With every connection busy past pool_timeout, the request is a 503 ServiceUnavailable."""
    upstream = ScriptedUpstream(lambda c, r, h: OK)
    pool = make_pool(upstream, max_connections=1, pool_timeout=0.05)
    busy = await held(pool)
    with pytest.raises(UpstreamError) as caught:
        await fetch(pool)
    error = caught.value
    assert (error.status, error.code, error.kind) == (503, "ServiceUnavailable", "pool_timeout")
    assert error.headers == {"Retry-After": "1"}
    assert error.cause == "timed out waiting 0.05s for a free upstream connection"
    assert pool.waiting == 0
    assert upstream.connections == 1
    busy.release()
    assert await fetch(pool) == (200, b"ok")


@pytest.mark.parametrize(("seconds", "header"), [(0.2, "1"), (1.0, "1"), (2.5, "3"), (30, "30")])
def test_retry_after_is_whole_seconds_at_least_one(seconds: float, header: str) -> None:
    """Retry-After is the pool timeout rounded up to whole seconds, never 0."""
    pool = Pool("http://upstream.test", ssl_context=None, connect_timeout=1, read_timeout=1,
                max_connections=1, keepalive=1, max_header_size=1024, pool_timeout=seconds)  # fmt: skip
    assert str(pool.retry_after) == header


async def test_a_waiter_that_times_out_leaves_no_place_behind(make_pool: MakePool) -> None:
    """After a waiter's pool timeout, the next waiter gets the connection as soon as it is free."""
    upstream = ScriptedUpstream(lambda c, r, h: OK)
    pool = make_pool(upstream, max_connections=1, pool_timeout=0.05)
    busy = await held(pool)
    with pytest.raises(UpstreamError):
        await fetch(pool)
    pool.pool_timeout = 30.0
    waiting = asyncio.create_task(fetch(pool))
    assert await until(lambda: pool.waiting == 1, 5)
    busy.release()
    assert await waiting == (200, b"ok")


async def test_a_waiter_that_leaves_gives_its_place_back(make_pool: MakePool) -> None:
    """A waiter woken for a free connection but cancelled before taking it passes it on."""
    upstream = ScriptedUpstream(lambda c, r, h: OK)
    pool = make_pool(upstream, max_connections=1, pool_timeout=30.0)
    busy = await held(pool)
    leaver = asyncio.create_task(fetch(pool))
    stayer = asyncio.create_task(fetch(pool))
    assert await until(lambda: pool.waiting == 2, 5)
    busy.release()  # wakes the leaver first ...
    leaver.cancel()  # ... which goes before it can take the connection
    with pytest.raises(asyncio.CancelledError):
        await leaver
    assert await stayer == (200, b"ok")
    assert upstream.connections == 1
    assert pool.waiting == 0


async def test_idle_connections_past_keepalive_are_closed_without_a_new_request(
    make_pool: MakePool,
) -> None:
    """After a burst, every idle connection is closed once it has been idle ``keepalive``, the
    ones below the top of the stack too, with no request to find them."""
    upstream = ScriptedUpstream(lambda connection, request, head: OK)
    pool = make_pool(upstream, keepalive=0.05)
    held_at_once = [await held(pool) for _ in range(3)]
    for response in held_at_once:
        while await response.read():
            pass
        response.release()
    assert (pool.open_connections, pool.idle_connections) == (3, 3)
    assert await until(lambda: pool.open_connections == 0, 5.0)
    assert pool.idle_connections == 0
    assert all(transport.closed for transport in upstream.transports)
    assert await fetch(pool) == (200, b"ok")
    assert upstream.connections == 4


async def test_a_busy_pool_keeps_its_recent_idle_connections(make_pool: MakePool) -> None:
    """The sweep closes only connections idle for ``keepalive``: one used again keeps serving."""
    upstream = ScriptedUpstream(lambda connection, request, head: OK)
    pool = make_pool(upstream, keepalive=30.0)
    assert await fetch(pool) == (200, b"ok")
    assert await fetch(pool) == (200, b"ok")
    assert (upstream.connections, pool.idle_connections) == (1, 1)
