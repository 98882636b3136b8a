"""The upstream pool and its HTTP/1.1 exchanges, driven directly against the simulator."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from proxy.errors import UpstreamError
from proxy.simulator import SimConfig, make_app
from proxy.upstream import Pool, Response
from proxy.upstream.connection import SENDING_BODY

MACHINES = (
    b'{"@odata.context":"https://api.security.microsoft.com/api/$metadata#Machines","value":[]}'
)
PATTERN = bytes(range(256))
MakePool = Callable[..., Pool]


@pytest.fixture
async def make_pool(simulator: TestServer) -> AsyncIterator[MakePool]:
    """Build pools to the simulator (conftest's) with short timeouts; each is closed afterwards."""
    pools: list[Pool] = []

    def build(origin: str | None = None, **changes: Any) -> Pool:
        options: dict[str, Any] = {
            "ssl_context": None,
            "connect_timeout": 1.0,
            "read_timeout": 2.0,
            "max_connections": 10,
            "keepalive": 30.0,
            "max_header_size": 16384,
        }
        options.update(changes)
        pool = Pool(origin or f"http://127.0.0.1:{simulator.port}", **options)
        pools.append(pool)
        return pool

    yield build
    for pool in pools:
        await pool.close()


async def fetch(
    pool: Pool,
    simulate: str = "",
    *,
    method: str = "GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: AsyncIterator[bytes] | None = None,
    chunked: bool = False,
) -> tuple[Response, bytes]:
    """One exchange read to its end; the connection goes back to the pool."""
    sent = list(headers or [])
    if simulate:
        sent.append((b"X-Simulate", simulate.encode()))
    response = await pool.request(method, "/api/machines", sent, body, chunked)
    try:
        return response, await read_all(response)
    finally:
        response.release()


async def read_all(response: Response) -> bytes:
    """The rest of the body."""
    parts = []
    while chunk := await response.read():
        parts.append(chunk)
    return b"".join(parts)


def header(response: Response, name: bytes) -> bytes | None:
    """The first value of a response header, by case-insensitive name."""
    return next((v for k, v in response.headers if k.lower() == name.lower()), None)


def upstream_connections(server: TestServer) -> int:
    """Connections the simulator holds open right now."""
    assert server.runner is not None
    assert server.runner.server is not None
    return len(server.runner.server.connections)


async def wait_for_upstream_connections(server: TestServer, count: int) -> None:
    """Wait until the simulator holds ``count`` connections (closes land a tick later)."""
    for _ in range(250):
        if upstream_connections(server) == count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the simulator holds {upstream_connections(server)}, not {count}")


def expected_download(size: int) -> str:
    """The sha256 of ``size`` bytes of the simulator's download pattern."""
    full, rest = divmod(size, len(PATTERN))
    return hashlib.sha256(PATTERN * full + PATTERN[:rest]).hexdigest()


async def upload(parts: list[bytes]) -> AsyncIterator[bytes]:
    """A request body streamed part by part."""
    for part in parts:
        await asyncio.sleep(0)
        yield part


async def test_keep_alive_connection_is_reused(make_pool: MakePool, simulator: TestServer) -> None:
    """Sequential requests share one kept-alive connection, on both ends."""
    pool = make_pool()
    for _ in range(3):
        response, body = await fetch(pool)
        assert response.status == 200
        assert body == MACHINES
        assert pool.open_connections == 1
        assert pool.idle_connections == 1
        assert upstream_connections(simulator) == 1


async def test_max_connections_bounds_concurrency(
    make_pool: MakePool, simulator: TestServer
) -> None:
    """Five concurrent slow requests through max_connections=2 use two connections and all end."""
    pool = make_pool(max_connections=2)
    seen_pool: set[int] = set()
    seen_upstream: set[int] = set()
    done = asyncio.Event()

    async def watch() -> None:
        while not done.is_set():
            seen_pool.add(pool.open_connections)
            seen_upstream.add(upstream_connections(simulator))
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        results = await asyncio.gather(*(fetch(pool, "slow=300ms") for _ in range(5)))
    finally:
        done.set()
        await watcher
    assert [(r.status, b) for r, b in results] == [(200, MACHINES)] * 5
    assert max(seen_pool) == 2
    assert max(seen_upstream) == 2
    assert pool.open_connections == 2


async def test_connection_close_answer_is_not_reused(make_pool: MakePool) -> None:
    """A response saying Connection: close gives its connection up instead of pooling it."""
    pool = make_pool()
    response, body = await fetch(pool, "set-header=Connection:close")
    assert response.status == 200
    assert header(response, b"Connection") == b"close"
    assert body == MACHINES
    assert pool.open_connections == 0
    assert pool.idle_connections == 0
    response, _ = await fetch(pool)
    assert response.status == 200
    assert pool.open_connections == 1


async def test_interim_103_is_skipped(make_pool: MakePool) -> None:
    """A 103 Early Hints before the answer is skipped; the final status, headers and body return."""
    pool = make_pool()
    response, body = await fetch(pool, "early-hints; error=NotFound")
    assert response.status == 404
    assert response.reason == "Not Found"
    assert header(response, b"Link") is None
    assert header(response, b"Content-Length") == str(len(body)).encode()
    assert orjson.loads(body)["error"]["code"] == "NotFound"
    target = header(response, b"X-Sim-Target")
    assert target is not None
    assert orjson.loads(body)["error"]["target"] == target.decode()
    # The interim answer left the connection in step: it is reused for the next one.
    assert pool.idle_connections == 1
    response, body = await fetch(pool)
    assert (response.status, body) == (200, MACHINES)
    assert pool.open_connections == 1


async def test_eof_delimited_body_is_read_whole(make_pool: MakePool) -> None:
    """A body without Content-Length or chunking is read until the close, all of it."""
    pool = make_pool()
    size = 1024 * 1024 + 7
    response, body = await fetch(pool, f"eof-body={size}")
    assert response.status == 200
    assert header(response, b"Content-Length") is None
    assert header(response, b"Transfer-Encoding") is None
    assert len(body) == size
    assert hashlib.sha256(body).hexdigest() == expected_download(size)
    assert pool.open_connections == 0


async def test_head_ends_at_the_headers_and_is_not_reused(make_pool: MakePool) -> None:
    """A HEAD answer has no body whatever its Content-Length, and its connection is dropped."""
    pool = make_pool()
    response, body = await fetch(pool, method="HEAD")
    assert response.status == 200
    assert header(response, b"Content-Length") == str(len(MACHINES)).encode()
    assert body == b""
    assert pool.open_connections == 0
    response, body = await fetch(pool)
    assert (response.status, body) == (200, MACHINES)


async def test_chunked_request_body_arrives_whole(make_pool: MakePool) -> None:
    """A streamed body sent chunked reaches the upstream byte for byte; empty parts end nothing."""
    pool = make_pool()
    parts = [PATTERN * 512, b"", PATTERN * 3, b"tail"]
    whole = b"".join(parts)
    response, raw = await fetch(pool, "echo", method="PUT", body=upload(parts), chunked=True)
    echo = orjson.loads(raw)
    assert response.status == 200
    assert echo["body_length"] == len(whole)
    assert echo["body_sha256"] == hashlib.sha256(whole).hexdigest()
    assert ["Transfer-Encoding", "chunked"] in echo["headers"]
    assert pool.idle_connections == 1


async def test_content_length_request_body_arrives_whole(make_pool: MakePool) -> None:
    """A streamed body with the caller's Content-Length goes out unframed and arrives whole."""
    pool = make_pool()
    parts = [PATTERN * 1024, PATTERN * 7, b"end"]
    whole = b"".join(parts)
    response, raw = await fetch(
        pool,
        "echo",
        method="POST",
        headers=[(b"Content-Length", str(len(whole)).encode())],
        body=upload(parts),
    )
    echo = orjson.loads(raw)
    assert response.status == 200
    assert echo["body_length"] == len(whole)
    assert echo["body_sha256"] == hashlib.sha256(whole).hexdigest()
    assert not any(name.lower() == "transfer-encoding" for name, _ in echo["headers"])
    assert pool.idle_connections == 1


async def test_oversized_response_headers_are_502(make_pool: MakePool) -> None:
    """Response headers past max_header_size are a 502 of kind protocol; the connection goes."""
    pool = make_pool(max_header_size=1024)
    simulate = ";".join(f"set-header=X-Pad-{i}:{'v' * 60}" for i in range(20))
    with pytest.raises(UpstreamError) as caught:
        await fetch(pool, simulate)
    assert (caught.value.status, caught.value.code, caught.value.kind) == (
        502,
        "BadGateway",
        "protocol",
    )
    assert pool.open_connections == 0
    response, _ = await fetch(pool, "set-header=X-Pad:" + "v" * 100)
    assert response.status == 200


async def test_refused_connection_is_502_refused(make_pool: MakePool) -> None:
    """Nothing listening on the upstream port is a 502 of kind refused, and nothing stays open."""
    pool = make_pool("http://127.0.0.1:9")
    with pytest.raises(UpstreamError) as caught:
        await fetch(pool)
    assert (caught.value.status, caught.value.code, caught.value.kind) == (
        502,
        "BadGateway",
        "refused",
    )
    assert pool.open_connections == 0


async def test_headers_slower_than_read_timeout_are_504(
    make_pool: MakePool, simulator: TestServer
) -> None:
    """Response headers later than read_timeout are a 504 of kind read_timeout; the connection goes."""
    pool = make_pool(read_timeout=0.3)
    with pytest.raises(UpstreamError) as caught:
        await fetch(pool, "slow=2s")
    assert (caught.value.status, caught.value.code, caught.value.kind) == (
        504,
        "GatewayTimeout",
        "read_timeout",
    )
    assert pool.open_connections == 0
    await wait_for_upstream_connections(simulator, 0)


async def test_body_stalling_past_read_timeout_is_a_timeout(make_pool: MakePool) -> None:
    """A body that stops flowing for longer than read_timeout makes read raise kind read_timeout."""
    pool = make_pool(read_timeout=0.3)
    response = await pool.request(
        "GET", "/", [(b"X-Simulate", b"download=1MiB;stall-body=2s")], None, False
    )
    received = 0
    failure: UpstreamError | None = None
    try:
        while chunk := await response.read():
            received += len(chunk)
    except UpstreamError as exc:
        failure = exc
    finally:
        response.release()
    assert response.status == 200
    assert failure is not None
    assert (failure.kind, failure.cause) == ("read_timeout", "timed out reading the response body")
    assert 0 < received < 1024 * 1024
    assert pool.open_connections == 0


async def test_connection_closed_by_the_upstream_while_idle_is_replaced(
    aiohttp_server: AiohttpServer, make_pool: MakePool
) -> None:
    """After the upstream closes an idle kept-alive connection, the next request still succeeds."""
    server: TestServer = await aiohttp_server(make_app(SimConfig()), keepalive_timeout=0.2)
    pool = make_pool(f"http://127.0.0.1:{server.port}")
    response, _ = await fetch(pool)
    assert response.status == 200
    assert pool.idle_connections == 1
    await wait_for_upstream_connections(server, 0)
    response, body = await fetch(pool)
    assert (response.status, body) == (200, MACHINES)
    assert pool.open_connections == 1
    assert upstream_connections(server) == 1


async def test_close_mid_body_drops_the_connection(
    make_pool: MakePool, simulator: TestServer
) -> None:
    """Response.close() part-way through a body drops its connection; the pool serves the next."""
    pool = make_pool()
    response = await pool.request("GET", "/", [(b"X-Simulate", b"download=1MiB")], None, False)
    assert response.status == 200
    assert await response.read()
    response.close()
    assert pool.open_connections == 0
    assert pool.idle_connections == 0
    await wait_for_upstream_connections(simulator, 0)
    response, body = await fetch(pool)
    assert (response.status, body) == (200, MACHINES)
    assert pool.open_connections == 1


async def test_closing_the_pool_closes_idle_connections(
    make_pool: MakePool, simulator: TestServer
) -> None:
    """Pool.close() closes every idle connection, and the upstream sees them go."""
    pool = make_pool()
    await asyncio.gather(fetch(pool, "slow=100ms"), fetch(pool, "slow=100ms"))
    assert pool.idle_connections == 2
    assert upstream_connections(simulator) == 2
    await pool.close()
    assert pool.open_connections == 0
    assert pool.idle_connections == 0
    await wait_for_upstream_connections(simulator, 0)


async def test_an_upstream_that_stops_reading_the_body_is_a_504_write_timeout(
    make_pool: MakePool,
) -> None:
    """A request body the upstream stops taking fails after read_timeout as write_timeout."""
    accepted: list[asyncio.StreamWriter] = []

    async def deaf(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(
            writer
        )  # its reader's buffer fills, then the kernel's: nothing more is read

    async def endless() -> AsyncIterator[bytes]:
        chunk = b"x" * 2**20
        for _ in range(256):
            yield chunk

    server = await asyncio.start_server(deaf, "127.0.0.1", 0)
    try:
        pool = make_pool(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", read_timeout=0.3)
        length = [(b"Content-Length", str(256 * 2**20).encode())]
        with pytest.raises(UpstreamError) as caught:
            await pool.request("POST", "/api/indicators", length, endless(), False)
        error = caught.value
        assert (error.status, error.code, error.kind) == (504, "GatewayTimeout", "write_timeout")
        assert error.cause == SENDING_BODY
        assert pool.open_connections == 0
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
