"""Upstream failures through the real proxy: each a defined answer, a bounded kind and a cause.

The upstream here is a raw HTTP/1.1 server that records the head of every request it reads and
answers (or keeps silent, or hangs up) as each test scripts it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.config import Pool as PoolSettings
from proxy.config import Timeouts
from proxy.errors import PROXY_HEADER
from tests.conftest import Stack
from tests.faultkit import until
from tests.httpraw import RawResponse, exchange
from tests.support.ports import free_port

FAILURES = "defender_proxy_upstream_failures_total"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
#: What the raw upstream does with request ``n`` (from 0) on its connection ``c`` (from 0):
#: the bytes to write (``b""``: stay silent), or None to hang up without a word.
Script = Callable[[int, int, bytes], bytes | None]


class RawUpstream:
    """A raw upstream on a loopback port; ``heads`` holds (connection, request head) as read."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.heads: list[tuple[int, bytes]] = []
        self.port = 0
        self._connections = 0
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self._connections
        self._connections += 1
        self._writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            for request in range(100):
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append((index, head))
                answer = self.script(index, request, head)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
        writer.close()

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def raw_upstream() -> AsyncIterator[Callable[[Script], Any]]:
    """Start raw upstreams for a test; each is closed afterwards."""
    started: list[RawUpstream] = []

    async def start(script: Script) -> RawUpstream:
        upstream = RawUpstream(script)
        await upstream.start()
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        await upstream.close()


async def proxied(stack: Stack, raw: bytes) -> RawResponse:
    """One raw request through the proxy, read to its end."""
    assert stack.client.port is not None
    return await exchange(stack.client.port, raw)


def failure_line(stack: Stack, kind: str) -> dict[str, Any]:
    """The one request line, checked to carry ``kind``; the caller checks its cause."""
    [line] = stack.logs.lines("request")
    assert (line["source"], line["kind"]) == ("proxy", kind)
    return line


def first_answered_then_hang_up(connection: int, request: int, head: bytes) -> bytes | None:
    """Every connection answers its first request, then reads the next and hangs up unanswered:
    a kept-alive connection the upstream dropped just as the proxy reused it."""
    return OK if request == 0 else None


GET = b"GET /api/machines HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n"
ISOLATE = (
    b"POST /api/machines/1a2b/isolate HTTP/1.1\r\nHost: proxy\r\nContent-Length: 0\r\n"
    b"Connection: close\r\n\r\n"
)


async def test_a_bodiless_post_on_a_dead_kept_connection_is_sent_once(
    make_stack: Any, raw_upstream: Any
) -> None:
    """A POST whose kept-alive connection dies unanswered reaches the upstream once: 502, no resend."""
    upstream: RawUpstream = await raw_upstream(first_answered_then_hang_up)
    stack: Stack = await make_stack(upstream=upstream.origin)
    assert (await proxied(stack, GET)).status == 200
    response = await proxied(stack, ISOLATE)
    assert response.status == 502
    assert response.header(PROXY_HEADER) == "BadGateway"
    assert orjson.loads(response.body)["error"]["code"] == "BadGateway"
    posts = [c for c, head in upstream.heads if head.startswith(b"POST ")]
    assert posts == [0]
    line = next(line for line in stack.logs.lines("request") if line["method"] == "POST")
    assert (line["status"], line["kind"]) == (502, "reset")
    assert line["cause"] == "the upstream closed the connection before answering"
    assert stack.sample(FAILURES, route="machines.isolate", kind="reset") == 1


async def test_a_get_on_a_dead_kept_connection_is_resent_on_a_fresh_one(
    make_stack: Any, raw_upstream: Any
) -> None:
    """A GET whose kept-alive connection dies unanswered is sent again on a new connection: 200."""
    upstream: RawUpstream = await raw_upstream(first_answered_then_hang_up)
    stack: Stack = await make_stack(upstream=upstream.origin)
    assert (await proxied(stack, GET)).status == 200
    response = await proxied(stack, GET)
    assert (response.status, response.body) == (200, b"ok")
    assert [c for c, _ in upstream.heads] == [0, 0, 1]
    assert stack.sample(FAILURES, route="machines.list", kind="reset") == 0


@pytest.mark.parametrize("status", [b"000", b"600", b"999"])
async def test_an_impossible_status_is_a_502_never_relayed(
    make_stack: Any, raw_upstream: Any, status: bytes
) -> None:
    """A status outside 100-599 is answered 502 in the envelope, logged as a protocol failure."""
    answer = b"HTTP/1.1 " + status + b" Odd\r\nContent-Length: 2\r\n\r\nok"
    upstream: RawUpstream = await raw_upstream(lambda c, r, h: answer)
    stack: Stack = await make_stack(upstream=upstream.origin)
    response = await proxied(stack, GET)
    assert response.status == 502
    assert orjson.loads(response.body)["error"]["code"] == "BadGateway"
    assert response.header(PROXY_HEADER) == "BadGateway"
    line = failure_line(stack, "protocol")
    assert line["cause"] == f"the upstream sent status {status.decode()}"
    assert stack.sample(FAILURES, route="machines.list", kind="protocol") == 1


async def test_a_refused_connection_says_refused(make_stack: Any) -> None:
    """Nothing listening is a 502 counted as refused, the address in the logged cause."""
    port = free_port()
    stack: Stack = await make_stack(upstream=f"http://127.0.0.1:{port}")
    response = await stack.client.get("/api/machines")
    assert response.status == 502
    assert (await response.json())["error"]["code"] == "BadGateway"
    line = failure_line(stack, "refused")
    assert line["cause"] == f"connection refused by 127.0.0.1:{port}"
    assert stack.sample(FAILURES, route="machines.list", kind="refused") == 1
    assert stack.sample(FAILURES, route="machines.list", kind="dns") == 0


async def test_an_unresolvable_name_says_name_resolution(make_stack: Any) -> None:
    """A host name that does not resolve (.invalid never does) is a 502 counted as dns."""
    stack: Stack = await make_stack(upstream="http://defender-upstream.invalid:443")
    response = await stack.client.get("/api/machines")
    assert response.status == 502
    assert (await response.json())["error"]["code"] == "BadGateway"
    line = failure_line(stack, "dns")
    assert line["cause"].startswith("name resolution failed for defender-upstream.invalid: ")
    assert stack.sample(FAILURES, route="machines.list", kind="dns") == 1
    assert stack.sample(FAILURES, route="machines.list", kind="refused") == 0


async def test_silence_after_the_request_is_a_504_waiting_for_headers(
    make_stack: Any, raw_upstream: Any
) -> None:
    """An upstream that reads the request and says nothing is a 504 naming the wait for headers."""
    upstream: RawUpstream = await raw_upstream(lambda c, r, h: b"")
    stack: Stack = await make_stack(
        upstream=upstream.origin, timeouts=Timeouts(connect=1.0, read=0.3)
    )
    response = await stack.client.get("/api/machines")
    assert response.status == 504
    assert (await response.json())["error"]["code"] == "GatewayTimeout"
    line = failure_line(stack, "read_timeout")
    assert line["cause"] == "timed out waiting for the response headers"
    assert stack.sample(FAILURES, route="machines.list", kind="read_timeout") == 1


async def test_silence_mid_body_is_noted_as_a_read_timeout(
    make_stack: Any, raw_upstream: Any
) -> None:
    """An upstream that stalls mid-body cuts the caller's body short, noted as a read timeout."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"
    upstream: RawUpstream = await raw_upstream(lambda c, r, h: head)
    stack: Stack = await make_stack(
        upstream=upstream.origin, timeouts=Timeouts(connect=1.0, read=0.3)
    )
    response = await stack.client.get("/api/machines")
    assert response.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()
    assert await until(lambda: stack.proxy.in_flight == 0, 5)
    [line] = stack.logs.lines("request")
    assert line["note"].startswith("upstream failed mid-body (read_timeout: ")


async def test_no_free_connection_within_timeouts_pool_is_a_503_with_retry_after(
    make_stack: Any,
) -> None:
    """With the one pooled connection busy past timeouts.pool, the next request gets a 503."""
    stack: Stack = await make_stack(
        timeouts=Timeouts(connect=1.0, read=5.0, pool=0.3),
        pool=PoolSettings(max_connections=1),
    )
    slow = asyncio.create_task(stack.client.get("/api/machines", headers={"X-Simulate": "slow=3s"}))
    assert stack.proxy.pool is not None
    pool = stack.proxy.pool
    assert await until(lambda: pool.open_connections == 1, 5)
    response = await stack.client.get("/api/alerts")
    assert response.status == 503
    assert not slow.done()  # answered while the connection was still busy
    error = (await response.json())["error"]
    assert error["code"] == "ServiceUnavailable"
    assert response.headers[PROXY_HEADER] == "ServiceUnavailable"
    assert response.headers["Retry-After"] == "1"
    line = failure_line(stack, "pool_timeout")
    assert (line["status"], line["target"]) == (503, error["target"])
    assert line["cause"] == "timed out waiting 0.3s for a free upstream connection"
    assert stack.sample(FAILURES, route="alerts.list", kind="pool_timeout") == 1
    done = await slow
    assert done.status == 200
    await done.read()
    response = await stack.client.get("/api/alerts")
    assert response.status == 200
