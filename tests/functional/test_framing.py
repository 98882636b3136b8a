"""Framing is the proxy's own both ways; the request id sent is the one logged; relayed answers
carry only the upstream's headers plus the documented additions."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from proxy.config import Limits
from proxy.errors import SERVER_NAME
from tests.conftest import Stack
from tests.httpraw import RawResponse, exchange, read_response

GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\Z")
ECHO = b"X-Simulate: echo\r\n"


async def _converse(port: int, raw: bytes, answers: int) -> list[RawResponse]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        return [await asyncio.wait_for(read_response(reader), 5.0) for _ in range(answers)]
    finally:
        writer.close()


def _echoed(response: RawResponse) -> dict[str, Any]:
    assert response.status == 200, response
    echo: dict[str, Any] = orjson.loads(response.body)
    return echo


def _named(echo: dict[str, Any], name: str) -> list[str]:
    return [value for key, value in echo["headers"] if key.lower() == name]


async def _upstream_requests(stack: Stack) -> int:
    async with stack.client.session.get(stack.upstream.make_url("/_sim/stats")) as response:
        return int((await response.json())["requests"])


@pytest.mark.parametrize(
    "connection",
    [b"Content-Length", b"keep-alive, content-length", b"close, CONTENT-LENGTH, host"],
)
async def test_connection_cannot_strip_the_content_length(
    served: tuple[Stack, int], connection: bytes
) -> None:
    """A Connection header naming Content-Length leaves the proxy's own length on the request."""
    stack, port = served
    smuggled = b"GET /api/machineactions/x/getPackageUri HTTP/1.1\r\nHost: p\r\n\r\n"
    body = smuggled * 3
    before = await _upstream_requests(stack)
    raw = (
        b"POST /api/indicators HTTP/1.1\r\nHost: p\r\nConnection: %s\r\n%s"
        b"Content-Length: %d\r\n\r\n%s" % (connection, ECHO, len(body), body)
    )
    [answer] = await _converse(port, raw, 1)
    echo = _echoed(answer)
    assert _named(echo, "content-length") == [str(len(body))]
    assert echo["body_length"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    # One request upstream: the smuggled ones stayed body.
    assert await _upstream_requests(stack) - before == 1
    assert [line["route"] for line in stack.logs.lines("request")] == ["indicators.submit"]


async def test_connection_cannot_strip_chunked_framing(served: tuple[Stack, int]) -> None:
    """Connection naming Transfer-Encoding: a small chunked body goes upstream whole, with the
    length the proxy read."""
    _, port = served
    raw = (
        b"POST /api/indicators HTTP/1.1\r\nHost: p\r\nConnection: transfer-encoding\r\n%s"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n" % ECHO
    )
    [answer] = await _converse(port, raw, 1)
    echo = _echoed(answer)
    assert _named(echo, "transfer-encoding") == []
    assert _named(echo, "content-length") == ["11"]
    assert echo["body_sha256"] == hashlib.sha256(b"hello world").hexdigest()


async def test_a_chunked_body_over_the_buffer_goes_upstream_chunked(
    make_stack: Callable[..., Any],
) -> None:
    """A chunked body larger than limits.request_buffer is streamed on, chunked, and arrives whole."""
    stack: Stack = await make_stack(limits=Limits(request_buffer=1024))
    body = bytes(range(256)) * 40

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 700):
            yield body[start : start + 700]

    async with stack.client.post(
        "/api/indicators", data=chunks(), headers={"X-Simulate": "echo"}
    ) as response:
        echo = orjson.loads(await response.read())
    assert _named(echo, "transfer-encoding") == ["chunked"]
    assert _named(echo, "content-length") == []
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()


async def test_pipelined_requests_after_a_connection_named_length_stay_in_step(
    served: tuple[Stack, int],
) -> None:
    """Two pipelined requests, the first naming its length in Connection: two answers, in order."""
    _, port = served
    first = b"POST /api/indicators HTTP/1.1\r\nHost: p\r\nConnection: content-length\r\n%s" % ECHO
    first += b"client-request-id: first\r\nContent-Length: 3\r\n\r\nabc"
    second = b"GET /api/alerts HTTP/1.1\r\nHost: p\r\n%sclient-request-id: second\r\n\r\n" % ECHO
    answers = await _converse(port, first + second, 2)
    assert [_named(_echoed(a), "client-request-id") for a in answers] == [["first"], ["second"]]
    assert [_echoed(a)["body_length"] for a in answers] == [3, 0]


async def test_a_bodiless_post_keeps_its_zero_length(served: tuple[Stack, int]) -> None:
    """Content-Length: 0 on a POST reaches the upstream as the proxy's own zero length."""
    _, port = served
    raw = b"POST /api/machines/m1/isolate HTTP/1.1\r\nHost: p\r\nConnection: close\r\n%s"
    raw += b"Content-Length: 0\r\n\r\n"
    echo = _echoed(await exchange(port, raw % ECHO))
    assert _named(echo, "content-length") == ["0"]
    assert _named(echo, "transfer-encoding") == []


@pytest.mark.parametrize("named", [b"client-request-id", b"host"])
async def test_connection_cannot_strip_what_the_proxy_owns(
    served: tuple[Stack, int], named: bytes
) -> None:
    """Connection naming Host or client-request-id: the upstream still gets both, as logged."""
    stack, port = served
    raw = b"GET /api/alerts HTTP/1.1\r\nHost: p\r\nConnection: close, %s\r\n%s" % (named, ECHO)
    raw += b"client-request-id: abc-123\r\n\r\n"
    echo = _echoed(await exchange(port, raw))
    assert len(_named(echo, "host")) == 1
    assert _named(echo, "client-request-id") == ["abc-123"]
    assert stack.logs.lines("request")[-1]["request_id"] == "abc-123"


async def test_an_insane_request_id_is_replaced_by_the_one_logged(
    served: tuple[Stack, int],
) -> None:
    """A caller id that is no sane token: the proxy's GUID goes upstream and into the log."""
    stack, port = served
    raw = b"GET /api/alerts HTTP/1.1\r\nHost: p\r\nConnection: close\r\n%s" % ECHO
    raw += b"client-request-id: not a valid id token=s3cr3tvalue\r\n\r\n"
    echo = _echoed(await exchange(port, raw))
    [sent] = _named(echo, "client-request-id")
    assert GUID.match(sent)
    line = stack.logs.lines("request")[-1]
    assert line["request_id"] == sent
    assert line["caller_request_id"].startswith("not a valid id")
    assert "s3cr3tvalue" not in stack.logs.text


async def test_a_long_caller_request_id_is_truncated_in_the_log(served: tuple[Stack, int]) -> None:
    """A caller id over the token length is replaced, and logged cut to 128 characters."""
    stack, port = served
    raw = b"GET /api/alerts HTTP/1.1\r\nHost: p\r\nConnection: close\r\n"
    raw += b"x-request-id: " + b"a" * 500 + b"\r\n\r\n"
    assert (await exchange(port, raw)).status == 200
    line = stack.logs.lines("request")[-1]
    assert GUID.match(line["request_id"])
    assert line["caller_request_id"] == "a" * 128


# --- answers relayed to callers ------------------------------------------------------------------


class BareUpstream:
    """A raw upstream that answers every request with the same bytes, whatever it was asked."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(self.answer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def _through_bare(make_stack: Callable[..., Any], answer: bytes) -> RawResponse:
    upstream = BareUpstream(answer)
    await upstream.start()
    try:
        stack: Stack = await make_stack(upstream=f"http://127.0.0.1:{upstream.port}")
        async with stack.client.get("/api/alerts") as response:
            await response.read()
            return RawResponse(
                response.status,
                [(k.lower(), v) for k, v in response.headers.items()],
                b"",
            )
    finally:
        await upstream.close()


async def test_a_relayed_answer_gains_no_content_type_and_no_server(
    make_stack: Callable[..., Any],
) -> None:
    """An answer without Content-Type or Server reaches the caller without either."""
    answer = await _through_bare(
        make_stack, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    )
    assert answer.header("content-type") is None
    assert answer.header("server") is None
    assert answer.header("content-length") == "2"
    assert answer.header("date") is not None  # RFC 9110 §6.6.1: added where missing


async def test_the_upstreams_own_server_and_date_pass_unchanged(
    make_stack: Callable[..., Any],
) -> None:
    """The upstream's Server and Date are relayed as sent."""
    answer = await _through_bare(
        make_stack,
        b"HTTP/1.1 200 OK\r\nServer: Microsoft-IIS/10.0\r\nDate: Tue, 01 Dec 2026 10:00:00 GMT\r\n"
        b"Content-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    )
    assert answer.header("server") == "Microsoft-IIS/10.0"
    assert answer.header("date") == "Tue, 01 Dec 2026 10:00:00 GMT"
    assert answer.header("content-type") == "text/plain"


async def test_an_answer_naming_its_length_in_connection_keeps_it(
    make_stack: Callable[..., Any],
) -> None:
    """An upstream answer whose Connection names Content-Length is relayed with that length."""
    answer = await _through_bare(
        make_stack,
        b"HTTP/1.1 200 OK\r\nConnection: content-length, close\r\nContent-Length: 5\r\n\r\nhello",
    )
    assert answer.header("content-length") == "5"


async def test_proxy_answers_name_no_versions(served: tuple[Stack, int]) -> None:
    """The proxy's own answers say Server: defender-proxy, without a version."""
    _, port = served
    answer = await exchange(port, b"GET /api/%2e%2e/x HTTP/1.1\r\nHost: p\r\n\r\n")
    assert answer.status == 400
    assert answer.header("server") == SERVER_NAME


async def test_a_secret_shaped_request_id_is_replaced_not_sent(served: tuple[Stack, int]) -> None:
    """A sane-looking id the scrubber would redact (a JWT) is replaced, so the log still names the
    id that was sent."""
    stack, port = served
    jwt = b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4eHh4eHh4In0.c2lnbmF0dXJlc2lnbmF0dXJl"
    raw = b"GET /api/alerts HTTP/1.1\r\nHost: p\r\nConnection: close\r\n%s" % ECHO
    raw += b"client-request-id: " + jwt + b"\r\n\r\n"
    echo = _echoed(await exchange(port, raw))
    [sent] = _named(echo, "client-request-id")
    assert GUID.match(sent)
    assert stack.logs.lines("request")[-1]["request_id"] == sent
    assert jwt.decode() not in stack.logs.text


async def test_a_trailer_field_never_reaches_the_next_request(served: tuple[Stack, int]) -> None:
    """After a chunked request with a trailer, the connection ends: the trailer field cannot
    become a header of the request pipelined behind it."""
    stack, port = served
    raw = (
        b"POST /api/alerts HTTP/1.1\r\nHost: p\r\n%sTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Trailer: planted\r\n\r\n"
        b"GET /api/alerts HTTP/1.1\r\nHost: p\r\n%s\r\n" % (ECHO, ECHO)
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    first = await asyncio.wait_for(read_response(reader), 5.0)
    assert first.header("connection") == "close"
    assert _echoed(first)["body_length"] == 3
    assert await asyncio.wait_for(reader.read(), 5.0) == b""
    writer.close()
    assert [line["method"] for line in stack.logs.lines("request")] == ["POST"]


async def test_a_chunk_broken_mid_body_is_refused_at_once(served: tuple[Stack, int]) -> None:
    """A chunked body that turns malformed after its first chunk was read gets a 400 in the
    envelope at once, not a wait for more body; nothing reaches the upstream."""
    stack, port = served
    before = await _upstream_requests(stack)
    head = b"POST /api/alerts HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.write(b"3\r\nabcXX0\r\n\r\n")
    answer = await asyncio.wait_for(read_response(reader), 5.0)
    writer.close()
    assert answer.status == 400
    assert orjson.loads(answer.body)["error"]["code"] == "BadRequest"
    assert answer.header("x-defender-proxy-error") == "BadRequest"
    assert await _upstream_requests(stack) == before
    [line] = stack.logs.lines("request")
    assert line["status"] == 400


async def test_a_coding_not_ending_in_chunked_is_refused_with_upgrade_too(
    served: tuple[Stack, int],
) -> None:
    """Transfer-Encoding whose last coding is not chunked is refused, Upgrade or not."""
    stack, port = served
    before = await _upstream_requests(stack)
    raw = (
        b"POST /api/alerts HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: identity\r\n"
        b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n0\r\n\r\n"
    )
    answer = await exchange(port, raw)
    assert answer.status == 400
    assert await _upstream_requests(stack) == before


async def test_a_refused_request_whose_body_then_breaks_is_answered_and_closed(
    served: tuple[Stack, int],
) -> None:
    """A request refused before its body was read, whose body then fails to parse, still gets
    its answer and its connection ends at once (aiohttp's lingering read does not wait on it)."""
    stack, port = served
    head = (
        b"PATCH /api/machines/r0 HTTP/1.0\r\nHost: p\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: transfer-encoding\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    answer = await asyncio.wait_for(read_response(reader), 5.0)
    writer.write(b"1000000000000000031\r\nPOST /x HTTP/1.1\r\nHost: p\r\n\r\n")
    assert answer.status == 400
    assert await asyncio.wait_for(reader.read(), 5.0) == b""  # aiohttp lingers up to 10 s
    writer.close()
    assert [line["status"] for line in stack.logs.lines("request")] == [400]


async def test_a_chunk_size_broken_at_the_start_of_a_read_is_refused(
    served: tuple[Stack, int],
) -> None:
    """A chunked body whose next bytes start with a malformed chunk size, while the proxy waits
    for them, gets its 400 at once (the parser wakes the reader before it reports the error)."""
    _, port = served
    head = b"POST /api/alerts HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    await asyncio.sleep(0.1)  # the proxy is waiting for more of the body
    writer.write(b"1 ;a=b\r\ny\r\n0\r\n\r\n")
    answer = await asyncio.wait_for(read_response(reader), 5.0)
    writer.close()
    assert answer.status == 400
    assert orjson.loads(answer.body)["error"]["code"] == "BadRequest"


async def _read_to_end(port: int, raw: bytes) -> bytes:
    """Everything the proxy sends on a fresh connection after ``raw``, until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read(-1)
    finally:
        writer.close()


async def test_an_http2_preface_gets_goaway_http_1_1_required(served: tuple[Stack, int]) -> None:
    """A prior-knowledge HTTP/2 client gets HTTP/2 frames it can read: SETTINGS, then GOAWAY with
    HTTP_1_1_REQUIRED (0xd) and a reason, and the connection closes; nothing reaches upstream."""
    stack, port = served
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    answer = await _read_to_end(port, preface)
    frames = []
    while answer:
        length = int.from_bytes(answer[:3], "big")
        kind, payload = answer[3], answer[9 : 9 + length]
        frames.append((kind, int.from_bytes(answer[5:9], "big"), payload))
        answer = answer[9 + length :]
    assert [(kind, stream) for kind, stream, _ in frames] == [(0x4, 0), (0x7, 0)]
    assert frames[0][2] == b""
    goaway = frames[1][2]
    assert int.from_bytes(goaway[4:8], "big") == 0xD
    assert b"HTTP/1.1" in goaway[8:]
    assert stack.logs.lines("request") == []


async def test_a_request_line_like_the_preface_is_still_parsed(served: tuple[Stack, int]) -> None:
    """Only the exact preface is refused in HTTP/2; a PRI request of HTTP/1.1 gets the envelope."""
    _, port = served
    answer = await _read_to_end(port, b"PRI * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b" 400 Bad Request" in answer.partition(b"\r\n")[0]
    assert b"X-Defender-Proxy-Error: BadRequest" in answer
