"""The simulator over HTTP: every X-Simulate directive, the quota as callers see it, /_sim/."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import zlib
from typing import Any

import aiohttp
import brotli
import jwt
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pytest_aiohttp import AiohttpClient, AiohttpServer

from proxy.codes import ERROR_TABLE
from proxy.simulator import SimConfig, make_app
from proxy.simulator.journal import Entry, Journal
from proxy.units import Limit

Client = TestClient[Any, Any]
MACHINES = (
    b'{"@odata.context":"https://api.security.microsoft.com/api/$metadata#Machines","value":[]}'
)
PATTERN = bytes(range(256))


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    """A client on a quota-free simulator that leaves bodies exactly as sent."""
    return await aiohttp_client(make_app(), auto_decompress=False)


async def call(
    client: Client, simulate: str = "", path: str = "/api/machines"
) -> tuple[Any, bytes]:
    """One GET with an X-Simulate header; the response and its raw body."""
    headers = {"X-Simulate": simulate} if simulate else {}
    async with client.get(path, headers=headers) as resp:
        return resp, await resp.read()


def expected_download(size: int) -> str:
    """The sha256 of ``size`` bytes of the simulator's download pattern."""
    digest = hashlib.sha256()
    full, rest = divmod(size, len(PATTERN))
    for _ in range(full):
        digest.update(PATTERN)
    digest.update(PATTERN[:rest])
    return digest.hexdigest()


async def test_default_answer_is_an_empty_machine_list(client: Client) -> None:
    """Without X-Simulate any method and path gets 200 and an empty OData list."""
    async with client.request("DELETE", "/anything/at/all") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/json")
        assert resp.headers["Content-Length"] == str(len(MACHINES))
        assert await resp.read() == MACHINES


@pytest.mark.parametrize(("code", "status"), sorted(ERROR_TABLE.items()))
async def test_every_documented_code_answers_its_status_with_a_fresh_target(
    client: Client, code: str, status: int
) -> None:
    """error=<Code> gives the table's status and a Defender envelope whose target is new each time."""
    targets = []
    for _ in range(2):
        resp, raw = await call(client, f"error={code}")
        assert resp.status == status
        assert resp.headers["Content-Length"] == str(len(raw))
        error = orjson.loads(raw)["error"]
        assert set(error) == {"code", "message", "target"}
        assert error["code"] == code
        assert isinstance(error["message"], str)
        assert error["message"]
        assert error["target"] == resp.headers["X-Sim-Target"]
        targets.append(error["target"])
    assert targets[0] != targets[1]


async def test_error_outside_the_table_takes_an_explicit_status(client: Client) -> None:
    """error=<Code>:<status> answers codes the table does not know."""
    resp, raw = await call(client, "error=ActiveRequestAlreadyExists:400")
    assert resp.status == 400
    assert orjson.loads(raw)["error"]["code"] == "ActiveRequestAlreadyExists"


async def test_graph_error_has_the_graph_envelope(client: Client) -> None:
    """graph-error with inner= nests the inner code; request-id is fresh and echoed in headers."""
    headers = {
        "X-Simulate": "graph-error=TooManyRequests:429; inner=throttledRequest",
        "client-request-id": "caller-42",
    }
    async with client.get("/v1.0/security/alerts_v2", headers=headers) as resp:
        assert resp.status == 429
        body = orjson.loads(await resp.read())
    inner = body["error"]["innerError"]
    assert body["error"]["code"] == "TooManyRequests"
    assert isinstance(body["error"]["message"], str)
    assert set(inner) == {"date", "request-id", "client-request-id", "innerError"}
    assert inner["innerError"] == {"code": "throttledRequest"}
    assert inner["client-request-id"] == "caller-42"
    assert inner["request-id"] == resp.headers["request-id"] == resp.headers["X-Sim-Target"]
    resp2, raw2 = await call(client, "graph-error=UnknownError:500")
    assert resp2.status == 500
    second = orjson.loads(raw2)["error"]
    assert "innerError" not in second["innerError"]
    assert second["innerError"]["request-id"] != inner["request-id"]


async def test_hunting_429_has_the_observed_body_and_retry_after(client: Client) -> None:
    """hunting-429 uses the string code "429", the observed message and a Retry-After."""
    resp, raw = await call(client, "hunting-429")
    assert resp.status == 429
    assert resp.headers["Retry-After"].isdigit()
    error = orjson.loads(raw)["error"]
    assert error["code"] == "429"
    assert error["message"] == "API calls quota exceeded! maximum allowed 45 per 00:01:00"
    assert error["target"] == resp.headers["X-Sim-Target"]


async def test_cpu_429_has_no_retry_after(client: Client) -> None:
    """cpu-429 names the CPU allotment and, like the API, gives no Retry-After."""
    resp, raw = await call(client, "cpu-429")
    assert resp.status == 429
    assert "Retry-After" not in resp.headers
    assert "exceeded processing resources" in orjson.loads(raw)["error"]["message"]


async def test_retry_after_sets_the_header_on_any_answer(client: Client) -> None:
    """retry-after= overrides a Retry-After the answer had, and accepts an HTTP date."""
    date = "Wed, 21 Oct 2015 07:28:00 GMT"
    resp, _ = await call(client, f"hunting-429; retry-after={date}")
    assert resp.headers.getall("Retry-After") == [date]
    resp, _ = await call(client, "error=InternalServerError;retry-after=3")
    assert resp.headers["Retry-After"] == "3"


@pytest.mark.parametrize(
    ("status", "expected_code", "expected"),
    [(201, None, b'{"status":201}'), (404, "NotFound", None), (418, "UnknownError", None)],
)
async def test_status_alone(
    client: Client, status: int, expected_code: str | None, expected: bytes | None
) -> None:
    """status= alone: a small JSON body below 400, a Defender envelope from 400 on."""
    resp, raw = await call(client, f"status={status}")
    assert resp.status == status
    if expected is not None:
        assert raw == expected
    else:
        assert orjson.loads(raw)["error"]["code"] == expected_code


@pytest.mark.parametrize(
    ("kind", "decode", "encoding"),
    [
        ("gzip", gzip.decompress, "gzip"),
        ("deflate", zlib.decompress, "deflate"),
        ("br", brotli.decompress, "br"),
    ],
)
async def test_compressed_bodies_are_sent_raw(
    client: Client, kind: str, decode: Any, encoding: str
) -> None:
    """body=gzip|deflate|br sends the compressed envelope as is, with its Content-Encoding."""
    resp, raw = await call(client, f"body={kind}")
    assert resp.status == 500
    assert resp.headers["Content-Encoding"] == encoding
    error = orjson.loads(decode(raw))["error"]
    assert error["code"] == "InternalServerError"
    assert error["target"] == resp.headers["X-Sim-Target"]


@pytest.mark.parametrize(
    ("simulate", "status"),
    [
        ("body=empty", 500),
        ("body=html", 502),
        ("body=html; status=503", 503),
        ("body=truncated", 500),
        ("body=invalid-json", 500),
        ("body=wrong-types;status=400", 400),
        ("body=invalid-utf8", 500),
        ("body=bad-gzip", 500),
    ],
)
async def test_broken_bodies(client: Client, simulate: str, status: int) -> None:
    """Each broken body kind arrives byte for byte with the right status and no decoding."""
    resp, raw = await call(client, simulate)
    assert resp.status == status
    assert resp.headers["Content-Length"] == str(len(raw))
    kind = simulate.split(";")[0].removeprefix("body=")
    if kind == "empty":
        assert raw == b""
    elif kind == "html":
        assert resp.headers["Content-Type"].startswith("text/html")
        assert raw.startswith(b"<html>")
        assert str(status).encode() in raw
    elif kind == "truncated":
        assert raw.startswith(b'{"error":{"code":"InternalServerError"')
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(raw)
    elif kind == "invalid-json":
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(raw)
    elif kind == "wrong-types":
        assert orjson.loads(raw) == {"error": {"code": 42, "message": ["x"]}}
    elif kind == "invalid-utf8":
        assert raw == b'{"error":{"code":"Bad\xff\xfe"}}'
        with pytest.raises(UnicodeDecodeError):
            raw.decode("utf-8")
    else:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert raw.startswith(b"\x1f\x8b")
        with pytest.raises((OSError, zlib.error)):
            gzip.decompress(raw)


async def test_oversize_is_padded_to_the_size_asked(client: Client) -> None:
    """body=oversize;size=100KiB streams a valid envelope of exactly that many bytes."""
    resp, raw = await call(client, "body=oversize; size=100KiB")
    assert resp.status == 500
    assert len(raw) == 100 * 1024 == int(resp.headers["Content-Length"])
    assert orjson.loads(raw)["error"]["target"] == resp.headers["X-Sim-Target"]
    async with client.get("/", headers={"X-Simulate": "body=oversize"}) as resp:
        assert resp.content_length == 2 * 1024 * 1024


@pytest.mark.parametrize("chunked", [False, True])
async def test_download_streams_the_pattern(client: Client, chunked: bool) -> None:
    """download= sends exactly that many bytes, with a Content-Length unless chunked is asked."""
    size = 3 * 1024 * 1024 + 5
    simulate = f"download={size}" + ("; chunked" if chunked else "")
    async with client.get("/api/files/export", headers={"X-Simulate": simulate}) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/octet-stream"
        if chunked:
            assert resp.headers["Transfer-Encoding"] == "chunked"
            assert "Content-Length" not in resp.headers
        else:
            assert resp.content_length == size
        digest, count = hashlib.sha256(), 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            digest.update(chunk)
            count += len(chunk)
    assert count == size
    assert digest.hexdigest() == expected_download(size)


async def test_gzip_download_decompresses_to_the_size(client: Client) -> None:
    """gzip-download= sends a gzip stream that inflates to that many bytes of the pattern."""
    resp, raw = await call(client, "gzip-download=1MiB")
    assert resp.headers["Content-Encoding"] == "gzip"
    body = gzip.decompress(raw)
    assert len(body) == 1024 * 1024
    assert hashlib.sha256(body).hexdigest() == expected_download(1024 * 1024)


async def test_echo_reports_the_request_byte_for_byte(aiohttp_server: AiohttpServer) -> None:
    """echo returns the raw path and the headers in order and case, as they were on the wire."""
    server: TestServer = await aiohttp_server(make_app())
    path = "/api/machines?$filter=healthStatus+eq+'Active'&x=%2F%20"
    body = b"hello simulator"
    request = (
        f"POST {path} HTTP/1.1\r\nHost: defender.test\r\nX-Simulate: echo\r\n"
        f"x-dup: one\r\nX-Dup: two\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode("latin-1") + body
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(request)
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, payload = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    echo = orjson.loads(payload)
    assert echo["method"] == "POST"
    assert echo["raw_path"] == path
    assert echo["version"] == "HTTP/1.1"
    assert echo["headers"] == [
        ["Host", "defender.test"],
        ["X-Simulate", "echo"],
        ["x-dup", "one"],
        ["X-Dup", "two"],
        ["Content-Length", str(len(body))],
        ["Connection", "close"],
    ]
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize(
    "simulate", ["download=1000", "download=1000; chunked", "body=oversize", "error=NotFound"]
)
async def test_head_answers_carry_no_body(aiohttp_server: AiohttpServer, simulate: str) -> None:
    """A HEAD answer ends at its headers, even for streamed answers: the next answer follows."""
    server: TestServer = await aiohttp_server(make_app())
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        f"HEAD / HTTP/1.1\r\nHost: t\r\nX-Simulate: {simulate}\r\n\r\n"
        "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
    )
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, second, body = response.split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 ")
    assert b"Transfer-Encoding" not in head
    assert second.startswith(b"HTTP/1.1 200 OK")
    assert body == MACHINES


EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"


async def test_early_hints_come_first_then_the_answer_on_the_same_connection(
    aiohttp_server: AiohttpServer,
) -> None:
    """early-hints sends a 103 with its Link at once, before slow=; the answer and keep-alive follow."""
    server: TestServer = await aiohttp_server(make_app())
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(
        b"GET / HTTP/1.1\r\nHost: t\r\nX-Simulate: early-hints; slow=1s\r\n\r\n"
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    hints = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.5)
    rest = await reader.read()
    writer.close()
    await writer.wait_closed()
    assert hints == EARLY_HINTS
    first, second = rest.split(MACHINES + b"HTTP/1.1 ")
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert second.startswith(b"200 OK\r\n")
    assert second.endswith(b"\r\n\r\n" + MACHINES)
    assert b" 103 " not in rest


async def test_early_hints_are_never_sent_to_http_1_0(aiohttp_server: AiohttpServer) -> None:
    """An HTTP/1.0 caller asking for early-hints gets only the final answer."""
    server: TestServer = await aiohttp_server(make_app())
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"GET / HTTP/1.0\r\nX-Simulate: early-hints; error=NotFound\r\n\r\n")
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    assert response.startswith(b"HTTP/1.0 404 Not Found\r\n")
    assert b"103" not in response.partition(b"\r\n\r\n")[0]


@pytest.mark.parametrize(
    ("simulate", "status", "size"),
    [
        ("eof-body=70001", 200, 70001),
        ("eof-body=200KiB; stall-body=50ms; status=203; set-header=X-Foo:1", 203, 200 * 1024),
        ("eof-body=0", 200, 0),
    ],
)
async def test_eof_body_is_delimited_by_the_close(
    aiohttp_server: AiohttpServer, simulate: str, status: int, size: int
) -> None:
    """eof-body= sends the pattern with no Content-Length or chunking, then closes the connection."""
    server: TestServer = await aiohttp_server(make_app())
    reader, writer = await asyncio.open_connection(server.host, server.port)
    # A keep-alive request: only the simulator's close can end the read below.
    writer.write(f"GET / HTTP/1.1\r\nHost: t\r\nX-Simulate: {simulate}\r\n\r\n".encode())
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    names = {line.partition(":")[0].lower() for line in lines[1:]}
    assert lines[0].startswith(f"HTTP/1.1 {status} ")
    assert "content-length" not in names
    assert "transfer-encoding" not in names
    assert "Connection: close" in lines
    assert ("X-Foo: 1" in lines) == ("X-Foo" in simulate)
    assert len(body) == size
    assert hashlib.sha256(body).hexdigest() == expected_download(size)


async def test_eof_body_answers_head_with_headers_only(aiohttp_server: AiohttpServer) -> None:
    """A HEAD asking for eof-body gets the head alone, then the close."""
    server: TestServer = await aiohttp_server(make_app())
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"HEAD / HTTP/1.1\r\nHost: t\r\nX-Simulate: eof-body=1000\r\n\r\n")
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.endswith(b"\r\nConnection: close\r\n\r\n")


async def test_echo_hashes_a_chunked_upload(client: Client) -> None:
    """echo streams a chunked upload through the hash and counts every byte."""

    async def upload() -> Any:
        for _ in range(8):
            yield PATTERN * 512

    async with client.put("/api/upload", data=upload(), headers={"X-Simulate": "echo"}) as resp:
        echo = orjson.loads(await resp.read())
    assert echo["body_length"] == 8 * 256 * 512
    assert echo["body_sha256"] == hashlib.sha256(PATTERN * 512 * 8).hexdigest()


async def test_slow_delays_the_answer(client: Client) -> None:
    """slow= holds the answer back at least that long."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp, _ = await call(client, "slow=200ms; error=NotFound")
    assert resp.status == 404
    # A loop may run a timer a little early (asyncio by up to its clock's resolution).
    assert loop.time() - started >= 0.19


async def test_stall_body_sends_headers_then_pauses_mid_body(client: Client) -> None:
    """stall-body= sends the headers and first chunk at once, the rest only after the stall."""
    async with client.get("/", headers={"X-Simulate": "download=256KiB; stall-body=400ms"}) as resp:
        assert resp.content_length == 256 * 1024
        first = await asyncio.wait_for(resp.content.readexactly(64 * 1024), 0.3)
        assert first == PATTERN * 256
        pending = asyncio.ensure_future(resp.content.readexactly(1))
        done, _ = await asyncio.wait({pending}, timeout=0.1)
        assert not done
        assert await pending == b"\x00"
        rest = await resp.read()
    assert len(rest) == 192 * 1024 - 1


async def test_stall_body_splits_a_json_answer(client: Client) -> None:
    """stall-body= on a JSON answer still delivers the whole envelope with its Content-Length."""
    resp, raw = await call(client, "error=Unauthorized; stall-body=50ms")
    assert resp.status == 401
    assert int(resp.headers["Content-Length"]) == len(raw)
    assert orjson.loads(raw)["error"]["code"] == "Unauthorized"


async def test_reset_closes_without_an_answer(client: Client) -> None:
    """reset drops the connection before any byte of an answer."""
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await call(client, "reset")


async def test_reset_headers_stops_mid_header_block(client: Client) -> None:
    """reset-headers sends a status line and part of a header, then resets the connection."""
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: sim\r\nX-Simulate: reset-headers\r\n\r\n")
    received = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 5):
            received += chunk
    except ConnectionResetError:
        pass
    finally:
        writer.close()
    assert received.startswith(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    assert b"\r\n\r\n" not in received  # the header block never ends


async def test_reset_body_cuts_a_body_short(client: Client) -> None:
    """reset-body promises 1000 bytes, sends 10, then closes."""
    async with client.get("/", headers={"X-Simulate": "reset-body"}) as resp:
        assert resp.status == 200
        assert resp.content_length == 1000
        assert await resp.content.readexactly(10) == b'{"value":['
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_truncate_chunked_never_sends_the_last_chunk(client: Client) -> None:
    """truncate-chunked sends one chunk and closes without the terminating chunk."""
    async with client.get("/", headers={"X-Simulate": "truncate-chunked"}) as resp:
        assert resp.headers["Transfer-Encoding"] == "chunked"
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_set_header_and_set_cookie_add_response_headers(client: Client) -> None:
    """set-header and set-cookie put hop-by-hop and cookie headers on the answer, repeats too."""
    simulate = (
        "set-header=Connection:close, X-Foo; set-header=Keep-Alive:timeout=5;"
        "set-header=X-Foo:1; set-header=X-Foo:2; set-cookie; set-cookie=b=2"
    )
    resp, raw = await call(client, simulate)
    assert raw == MACHINES
    assert resp.headers["Connection"] == "close, X-Foo"
    assert resp.headers["Keep-Alive"] == "timeout=5"
    assert resp.headers.getall("X-Foo") == ["1", "2"]
    cookies = resp.headers.getall("Set-Cookie")
    assert len(cookies) == 2
    assert cookies[1] == "b=2"


async def test_several_x_simulate_headers_read_as_one_list(client: Client) -> None:
    """Directives split over two X-Simulate headers combine."""
    headers = [("X-Simulate", "error=NotFound"), ("X-Simulate", "retry-after=9")]
    async with client.get("/", headers=headers) as resp:
        assert resp.status == 404
        assert resp.headers["Retry-After"] == "9"


@pytest.mark.parametrize(
    ("simulate", "named"),
    [
        ("explode", "'explode'"),
        ("error=Nope", "Nope"),
        ("body=weird", "weird"),
        ("status=abc", "status"),
        ("download=lots", "download"),
        ("slow=forever", "slow"),
        ("echo; reset", "reset"),
        ("size=1MiB", "size"),
        ("set-header=no colon", "set-header"),
        ("echo=1", "echo"),
        ("status=500; error=NotFound", "status"),
        ("slow=1s; slow=2s", "twice"),
        ("reset; stall-body=1s", "stall-body"),
        ("graph-error=throttledRequest", "graph-error"),
        ("error=NotFound:302", "error"),
        ("early-hints=yes", "early-hints"),
        ("early-hints; reset", "early-hints"),
        ("early-hints; reset-headers", "early-hints"),
        ("reset-headers; stall-body=1s", "stall-body"),
        ("eof-body", "eof-body"),
        ("eof-body=lots", "eof-body"),
        ("eof-body=1KiB; chunked", "chunked"),
    ],
)
async def test_bad_directives_are_refused(client: Client, simulate: str, named: str) -> None:
    """An unknown, malformed or contradictory directive gets a 400 envelope naming it."""
    resp, raw = await call(client, simulate)
    assert resp.status == 400
    error = orjson.loads(raw)["error"]
    assert error["code"] == "BadRequest"
    assert named in error["message"]


async def test_quota_refuses_then_admits_after_the_window(aiohttp_client: AiohttpClient) -> None:
    """3/10s admits three, refuses the fourth with Retry-After, admits once the clock moves 10 s."""
    clock = FakeClock()
    client = await aiohttp_client(make_app(SimConfig(limits=(Limit(3, 10.0),), clock=clock)))
    for _ in range(3):
        resp, _ = await call(client)
        assert resp.status == 200
    resp, raw = await call(client, "error=NotFound")
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "10"
    error = orjson.loads(raw)["error"]
    assert error["code"] == "TooManyRequests"
    assert error["message"] == (
        "API calls quota exceeded! maximum allowed 3 per 00:00:10. Try again in 10 seconds."
    )
    assert error["target"] == resp.headers["X-Sim-Target"]
    clock.now += 9.5
    resp, _ = await call(client)
    assert resp.headers["Retry-After"] == "1"
    clock.now += 0.5
    resp, _ = await call(client, "error=NotFound")
    assert resp.status == 404


async def test_stats_count_requests_and_the_busiest_window(aiohttp_client: AiohttpClient) -> None:
    """/_sim/stats counts requests and the most admitted in any window; /_sim/ is not counted."""
    clock = FakeClock()
    config = SimConfig(limits=(Limit(3, 10.0), Limit(100, 1.0)), clock=clock)
    client = await aiohttp_client(make_app(config))
    for step in (0.0, 0.0, 5.0, 4.0, 1.0, 0.5, 0.0):
        clock.now += step
        await call(client)
    async with client.get("/_sim/stats") as resp:
        stats = await resp.json()
    # At 0, 0, 5 admitted; 9 refused; 10 admitted (both 0s are out of (0, 10]); 10.5 admitted
    # (only 5 and 10 in (0.5, 10.5]); the second 10.5 refused. The busiest second holds two.
    assert stats == {
        "requests": 7,
        "admitted": 5,
        "throttled": 2,
        "max_in_window": {"3/10s": 3, "100/1s": 2},
    }


async def test_sim_reset_clears_stats_and_quota(aiohttp_client: AiohttpClient) -> None:
    """POST /_sim/reset forgets the counts and frees the window."""
    clock = FakeClock()
    client = await aiohttp_client(make_app(SimConfig(limits=(Limit(1, 60.0),), clock=clock)))
    await call(client)
    resp, _ = await call(client)
    assert resp.status == 429
    async with client.post("/_sim/reset") as reset:
        assert reset.status == 200
    async with client.get("/_sim/stats") as stats:
        assert await stats.json() == {
            "requests": 0,
            "admitted": 0,
            "throttled": 0,
            "max_in_window": {"1/1m": 0},
        }
    resp, _ = await call(client)
    assert resp.status == 200


async def test_the_journal_lists_each_request_with_its_id_and_time(
    aiohttp_client: AiohttpClient,
) -> None:
    """/_sim/requests lists every request in order of arrival: its time, client-request-id,
    method, path, whether the quota throttled it and its token's uti; /_sim/ is not listed;
    reset clears it."""
    clock = FakeClock()
    client = await aiohttp_client(make_app(SimConfig(limits=(Limit(1, 60.0),), clock=clock)))
    token = jwt.encode({"uti": "u-1"}, "k" * 32, algorithm="HS256")
    for request_id, authorization in (("first", ""), ("second", f"Bearer {token}")):
        clock.now += 1.5
        headers = {"client-request-id": request_id, "Authorization": authorization}
        async with client.get("/api/machines/m1", headers=headers) as resp:
            await resp.read()
    async with client.get("/_sim/requests") as listed:
        journal = await listed.json()
    assert journal == {
        "requests": [
            {"at": 1001.5, "id": "first", "method": "GET", "path": "/api/machines/m1",
             "throttled": False, "token": ""},
            {"at": 1003.0, "id": "second", "method": "GET", "path": "/api/machines/m1",
             "throttled": True, "token": "u-1"},
        ]
    }  # fmt: skip
    async with client.post("/_sim/reset"):
        pass
    async with client.get("/_sim/requests") as listed:
        assert await listed.json() == {"requests": []}


def test_the_journal_keeps_only_the_newest() -> None:
    """Past its size the journal drops its oldest entries: memory stays bounded."""
    journal = Journal(size=3)
    for index in range(5):
        journal.add(Entry(float(index), f"r{index}", "GET", "/api/alerts", False))
    listed = journal.as_json()["requests"]
    assert isinstance(listed, list)
    assert [entry["id"] for entry in listed] == ["r2", "r3", "r4"]


async def test_unknown_control_path_is_not_forwarded_to_the_fake_api(client: Client) -> None:
    """A wrong /_sim/ path or method is a 404 and is not counted as a request."""
    resp, _ = await call(client, path="/_sim/nope")
    assert resp.status == 404
    resp, _ = await call(client, path="/_sim/reset")
    assert resp.status == 404
    async with client.get("/_sim/stats") as stats:
        assert (await stats.json())["requests"] == 0


@pytest.mark.parametrize(
    "path",
    [
        "/v1.0/security/runHuntingQuery",
        "/v1.0/security/microsoft.graph.security.runHuntingQuery",
        "/beta/security/runHuntingQuery",
    ],
)
async def test_graph_hunting_answers_with_results_in_every_spelling(
    client: Client, path: str
) -> None:
    """runHuntingQuery, however the API would read it, gets a huntingQueryResults body."""
    async with client.post(path, json={"query": "DeviceInfo | take 2"}) as resp:
        assert resp.status == 200
        body = orjson.loads(await resp.read())
    assert [column["name"] for column in body["schema"]] == ["Timestamp", "DeviceName"]
    assert len(body["results"]) == 2


async def test_a_directive_or_another_method_keeps_hunting_out(client: Client) -> None:
    """A directive chooses the hunting call's answer; a GET on the action is not a hunt."""
    path = "/v1.0/security/runHuntingQuery"
    async with client.post(path, headers={"X-Simulate": "hunting-429"}) as resp:
        assert resp.status == 429
    resp, raw = await call(client, path=path)
    assert resp.status == 200
    assert raw == MACHINES
