"""Slow, silent and stalled callers are cut off at timeouts.caller; idle connections close after
timeouts.caller_keepalive; the connection cap makes room by closing what does no work."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson
import pytest
from aiohttp import web

from proxy import app as wiring
from proxy.config import Limits, Pool, Settings, Timeouts
from proxy.errors import PROXY_HEADER
from tests.conftest import Serve, Stack
from tests.faultkit import until
from tests.httpraw import exchange, read_response

CALLER = 0.3
TIMEOUTS = Timeouts(connect=1.0, read=5.0, caller=CALLER, caller_keepalive=0.5)
REQUEST = b"GET /api/alerts HTTP/1.1\r\nHost: p\r\n\r\n"


@pytest.fixture
def callers(serve: Serve) -> Serve:
    """Start the proxy on its production server class with the short caller timeouts."""

    async def start(**changes: Any) -> tuple[Stack, int]:
        return await serve(**{"timeouts": TIMEOUTS, **changes})

    return start


async def _eof(reader: asyncio.StreamReader, seconds: float = 5.0) -> bytes:
    """Everything the proxy sends until it closes the connection."""
    return await asyncio.wait_for(reader.read(), seconds)


async def test_a_half_sent_head_gets_408_in_the_envelope(callers: Serve) -> None:
    """A request head left unfinished past timeouts.caller is answered 408 and closed."""
    stack, port = await callers()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /api/alerts HTTP/1.1\r\nHost: p\r\n")
    answer = await asyncio.wait_for(read_response(reader), 5.0)
    assert answer.status == 408
    assert answer.header(PROXY_HEADER) == "RequestTimeout"
    assert orjson.loads(answer.body)["error"]["code"] == "RequestTimeout"
    assert await _eof(reader) == b""
    writer.close()
    assert stack.sample("defender_proxy_caller_timeouts_total", phase="head") == 1
    [line] = stack.logs.lines("caller cut off: no whole request head within timeouts.caller")
    assert line["target"] == orjson.loads(answer.body)["error"]["target"]


async def test_a_dribbled_head_is_cut_before_it_ends(callers: Serve) -> None:
    """A head sent a byte at a time is cut off at the deadline, however long it keeps dribbling."""
    stack, port = await callers()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = b"GET /api/alerts HTTP/1.1\r\nHost: p\r\nX-Slow: " + b"a" * 200 + b"\r\n\r\n"
    sent = 0
    for byte in head:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            break
        sent += 1
        await asyncio.sleep(CALLER / 10)
        if reader.at_eof():
            break
    assert sent < len(head)
    assert stack.sample("defender_proxy_caller_timeouts_total", phase="head") == 1
    writer.close()


async def test_a_silent_connection_is_closed_without_an_answer(callers: Serve) -> None:
    """A connection that sends nothing is closed at timeouts.caller, with no bytes sent to it."""
    stack, port = await callers()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await _eof(reader) == b""
    writer.close()
    assert stack.sample("defender_proxy_caller_timeouts_total", phase="head") == 1


async def test_an_idle_kept_alive_connection_closes_after_caller_keepalive(callers: Serve) -> None:
    """After an answer, a connection that stays idle is closed after timeouts.caller_keepalive."""
    stack, port = await callers()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    assert (await asyncio.wait_for(read_response(reader), 5.0)).status == 200
    assert await _eof(reader) == b""
    writer.close()
    # Idle after a request is keep-alive's business, not a late head.
    assert stack.sample("defender_proxy_caller_timeouts_total", phase="head") == 0


async def test_a_stalled_upload_gets_408_and_frees_the_upstream_connection(callers: Serve) -> None:
    """A body that stops arriving: 408, the upstream connection is freed for the next caller."""
    stack, port = await callers(pool=Pool(max_connections=1))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /api/indicators HTTP/1.1\r\nHost: p\r\nContent-Length: 100\r\n\r\n0123456789"
    )
    answer = await asyncio.wait_for(read_response(reader), 5.0)
    assert answer.status == 408
    assert answer.header(PROXY_HEADER) == "RequestTimeout"
    writer.close()
    # The one pool connection is free again: an ordinary request goes through at once.
    assert (await exchange(port, REQUEST)).status == 200
    assert stack.sample("defender_proxy_caller_timeouts_total", phase="body") == 1
    lines = stack.logs.lines("request")
    assert [(line["route"], line["status"]) for line in lines] == [
        ("indicators.submit", 408),
        ("alerts.list", 200),
    ]
    assert lines[0]["bytes_in"] == 10


async def test_a_stalled_small_upload_holds_no_upstream_connection(callers: Serve) -> None:
    """A body under limits.request_buffer is read before a pool connection is taken."""
    _, port = await callers(
        pool=Pool(max_connections=1), timeouts=replace(TIMEOUTS, caller=3.0, pool=0.5)
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /api/indicators HTTP/1.1\r\nHost: p\r\nContent-Length: 100\r\n\r\n0123")
    # While the upload stalls, the one pool connection serves others at once.
    for _ in range(3):
        assert (await exchange(port, REQUEST)).status == 200
    assert not reader.at_eof()
    answer = await asyncio.wait_for(read_response(reader), 10.0)
    assert answer.status == 408
    writer.close()


async def test_a_caller_not_taking_the_answer_is_cut_and_the_upstream_freed(callers: Serve) -> None:
    """A caller that stops reading a download is cut off at the deadline; the upstream is freed."""
    stack, port = await callers(pool=Pool(max_connections=1))
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /api/alerts HTTP/1.1\r\nHost: p\r\nX-Simulate: download=64MiB\r\n\r\n")
    cut = await until(
        lambda: stack.sample("defender_proxy_caller_timeouts_total", phase="answer") == 1, 20.0
    )
    assert cut
    assert (await exchange(port, REQUEST)).status == 200
    writer.close()
    [download, after] = stack.logs.lines("request")
    assert download["note"].startswith("caller stopped taking the answer")
    assert download["bytes_out"] < 64 * 2**20
    assert after["status"] == 200


async def test_the_cap_closes_the_longest_idle_connection_for_a_newcomer(callers: Serve) -> None:
    """At the cap, a new caller takes the place of the connection idle the longest."""
    stack, port = await callers(
        limits=Limits(caller_connections=2),
        timeouts=replace(TIMEOUTS, caller=30.0, caller_keepalive=30.0),
    )
    oldest_reader, oldest = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(0.05)
    newer_reader, newer = await asyncio.open_connection("127.0.0.1", port)
    assert (await exchange(port, REQUEST)).status == 200
    assert await _eof(oldest_reader) == b""
    assert not newer_reader.at_eof()
    assert stack.sample("defender_proxy_caller_connections_shed_total", reason="evicted") == 1
    oldest.close()
    newer.close()


async def test_the_cap_refuses_a_newcomer_when_every_connection_works(callers: Serve) -> None:
    """At the cap with every connection's request in progress, the new one is closed at once."""
    stack, port = await callers(
        limits=Limits(caller_connections=1),
        timeouts=replace(TIMEOUTS, caller=30.0, caller_keepalive=30.0),
    )
    busy_reader, busy = await asyncio.open_connection("127.0.0.1", port)
    busy.write(b"GET /api/alerts HTTP/1.1\r\nHost: p\r\nX-Simulate: slow=1s\r\n\r\n")
    assert await until(lambda: stack.proxy.in_flight == 1, 5.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    assert await _eof(reader) == b""
    writer.close()
    assert (await asyncio.wait_for(read_response(busy_reader), 5.0)).status == 200
    busy.close()
    assert stack.sample("defender_proxy_caller_connections_shed_total", reason="refused") == 1
    assert stack.sample("defender_proxy_caller_connections") >= 0


def test_settings_carry_the_caller_timeouts() -> None:
    """The defaults are the documented ones: 30 s per caller wait, 5 s pool, 75 s keep-alive."""
    timeouts = Settings().timeouts
    assert (timeouts.caller, timeouts.pool, timeouts.caller_keepalive) == (30.0, 5.0, 75.0)


async def test_a_refused_caller_still_sending_reads_its_answer(callers: Serve) -> None:
    """A caller whose bytes keep coming after the parser refused its request reads the 400, and
    nothing it sends after is answered: the connection lingers, dropping input, then ends."""
    _, port = await callers()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /api/alerts HTTP/1.1\r\nHost: p\r\nContent-Length: 0\r\nX-Folded: a\r\n\t")
    await writer.drain()
    await asyncio.sleep(0.2)  # the 400 is sent and the connection closed meanwhile
    writer.write(b"b\r\n\r\nGET /api/alerts HTTP/1.1\r\nHost: p\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(0.2)  # a reset, if one is sent, is here before the answer is read
    answer = await asyncio.wait_for(read_response(reader), 5.0)
    assert answer.status == 400
    assert await _eof(reader) == b""
    writer.close()


async def test_a_lingering_connection_ends_within_the_linger(callers: Serve) -> None:
    """A caller that never closes its side after a refusal is closed by the proxy after LINGER."""
    stack, port = await callers()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /api/%2e%2e/x HTTP/1.1\r\nHost: p\r\n\r\n")
    answer = await asyncio.wait_for(read_response(reader), 5.0)
    assert answer.status == 400
    # The proxy's FIN: the caller has read everything there is.
    assert await _eof(reader) == b""
    assert await until(lambda: stack.sample("defender_proxy_caller_connections") == 0, 10.0)
    writer.close()


async def test_a_closed_connection_is_freed_without_the_cycle_collector(
    make_stack: Callable[..., Any],
) -> None:
    """A caller's connection, once closed, is freed by reference counting alone: its handler,
    parser and buffers do not wait for the cycle collector, which an idle proxy may not run."""
    stack: Stack = await make_stack()
    server = wiring.proxy_server(stack.proxy)
    runner = web.ServerRunner(server)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    gc.disable()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", runner.addresses[0][1])
        writer.write(REQUEST)
        assert (await asyncio.wait_for(read_response(reader), 5.0)).status == 200
        (handler,) = server.connections
        gone = weakref.ref(handler)
        del handler
        writer.close()
        assert await until(lambda: not server.connections, 5.0)
        assert await until(lambda: gone() is None, 1.0)
    finally:
        gc.enable()
        await runner.cleanup()
