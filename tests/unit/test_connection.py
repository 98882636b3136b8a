"""The HTTP/1.1 exchange state machine, driven with scripted bytes over an in-memory transport."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from proxy.upstream.connection import (
    READING_BODY,
    SENDING_BODY,
    WAITING_FOR_HEADERS,
    Connection,
)
from proxy.upstream.errors import ProtocolError, ReadTimeout, Reset, TransportError, WriteTimeout
from tests.memory import MemoryTransport

HEAD = b"GET /api/machines HTTP/1.1\r\nHost: upstream\r\n\r\n"


async def connected(max_header_size: int = 1024) -> tuple[Connection, MemoryTransport]:
    """A fresh connection with an in-memory transport attached, as a connector would."""
    conn = Connection(asyncio.get_running_loop(), max_header_size)
    transport = MemoryTransport(conn)
    conn.connection_made(transport)
    return conn, transport


async def exchange(
    conn: Connection, *script: bytes, head_only: bool = False, timeout: float = 5.0
) -> None:
    """Send a bodiless request, feed ``script`` piece by piece, and wait for the headers."""
    await conn.send(HEAD, None, False, head_only, timeout)
    for piece in script:
        conn.data_received(piece)
    await conn.wait(conn.headers_done, timeout, ReadTimeout, WAITING_FOR_HEADERS)


async def body_of(conn: Connection) -> bytes:
    """The rest of the body, read chunk by chunk."""
    parts = []
    while chunk := await conn.read_chunk(5.0):
        parts.append(chunk)
    return b"".join(parts)


async def failure(conn: Connection, *script: bytes) -> TransportError:
    """The error an exchange fed ``script`` ends with before its headers."""
    with pytest.raises(TransportError) as caught:
        await exchange(conn, *script)
    return caught.value


async def test_the_request_head_is_written_as_given() -> None:
    """send() writes the head bytes unchanged and nothing else for a bodiless request."""
    conn, transport = await connected()
    await conn.send(HEAD, None, False, False, 5.0)
    assert bytes(transport.written) == HEAD


async def test_content_length_answer_split_anywhere_is_read_whole() -> None:
    """An answer fed one byte at a time gives its status, reason, headers and body, reusable."""
    conn, _ = await connected()
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello"
    await exchange(conn, *(answer[i : i + 1] for i in range(len(answer))))
    assert (conn.status, conn.reason) == (200, b"OK")
    assert conn.headers == [(b"Content-Length", b"5"), (b"X-A", b"b")]
    assert await body_of(conn) == b"hello"
    assert conn.reusable


async def test_interim_answers_are_skipped() -> None:
    """100 Continue and 103 Early Hints before the answer leave only the final one, in step."""
    conn, _ = await connected()
    await exchange(
        conn,
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n",
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}",
    )
    assert (conn.status, conn.reason, conn.headers) == (
        404,
        b"Not Found",
        [(b"Content-Length", b"2")],
    )
    assert await body_of(conn) == b"{}"
    assert conn.reusable


async def test_head_answer_ends_at_its_head() -> None:
    """An answer to HEAD has no body whatever its Content-Length, and is never reused."""
    conn, _ = await connected()
    await exchange(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 90\r\n\r\n", head_only=True)
    assert conn.status == 200
    assert await body_of(conn) == b""
    assert conn.complete
    assert not conn.reusable


async def test_chunked_body_is_decoded_and_keeps_the_connection() -> None:
    """A chunked body comes out decoded, across pieces that split chunk sizes and data."""
    conn, _ = await connected()
    await exchange(
        conn,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"lo\r\n",
        b"6;ext=1\r\n world\r\n0",
        b"\r\n\r\n",
    )
    assert await body_of(conn) == b"hello world"
    assert conn.reusable


async def test_close_delimited_body_ends_at_a_clean_close() -> None:
    """A body with neither length nor chunking runs to the close, then is complete, not reused."""
    conn, _ = await connected()
    await exchange(conn, b"HTTP/1.1 200 OK\r\n\r\nfirst ")
    conn.data_received(b"second")
    conn.connection_lost(None)
    assert await body_of(conn) == b"first second"
    assert conn.complete
    assert not conn.reusable


async def test_close_delimited_body_cut_by_a_reset_is_an_error() -> None:
    """A close-delimited body ended by a reset (not a clean close) is a Reset, never whole."""
    conn, _ = await connected()
    await exchange(conn, b"HTTP/1.1 200 OK\r\n\r\npart")
    conn.connection_lost(ConnectionResetError())
    assert await conn.read_chunk(5.0) == b"part"
    with pytest.raises(Reset, match="the upstream reset the connection mid-body"):
        await conn.read_chunk(5.0)


async def test_length_body_cut_short_is_a_reset() -> None:
    """A close before Content-Length bytes arrived is a Reset after the bytes that did."""
    conn, _ = await connected()
    await exchange(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    conn.connection_lost(None)
    assert await conn.read_chunk(5.0) == b"abc"
    with pytest.raises(Reset, match="the upstream closed the connection mid-body"):
        await conn.read_chunk(5.0)


async def test_close_before_any_answer_is_a_reset_with_nothing_received() -> None:
    """A close before a byte of the answer is a Reset and leaves received_any false."""
    conn, _ = await connected()
    await conn.send(HEAD, None, False, False, 5.0)
    conn.connection_lost(None)
    error = await failure(conn)
    assert isinstance(error, Reset)
    assert str(error) == "the upstream closed the connection before answering"
    assert not conn.received_any


async def test_oversized_header_fields_are_a_protocol_error() -> None:
    """Header fields past max_header_size fail the exchange and abort the transport."""
    conn, transport = await connected(max_header_size=256)
    fields = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"v" * 40) for i in range(10))
    error = await failure(conn, b"HTTP/1.1 200 OK\r\n" + fields + b"\r\n")
    assert isinstance(error, ProtocolError)
    assert str(error) == "the response head is over the size limit"
    assert transport.closed


async def test_an_endless_status_line_is_bounded() -> None:
    """A status line that never ends is cut off once past twice max_header_size."""
    conn, transport = await connected(max_header_size=256)
    error = await failure(conn, b"HTTP/1.1 200 " + b"O" * 300, b"K" * 300)
    assert isinstance(error, ProtocolError)
    assert str(error) == "the response head is over the size limit"
    assert transport.closed


@pytest.mark.parametrize(
    "garbage",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"HTTP/1.1 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
    ],
)
async def test_garbage_is_a_protocol_error(garbage: bytes) -> None:
    """Bytes that are not an HTTP/1.1 response fail the exchange as a ProtocolError."""
    conn, transport = await connected()
    await conn.send(HEAD, None, False, False, 5.0)
    conn.data_received(garbage)
    if garbage.endswith(b"zz\r\n"):
        await conn.wait(conn.headers_done, 5.0, ReadTimeout, WAITING_FOR_HEADERS)
        with pytest.raises(ProtocolError, match="the upstream sent an invalid response"):
            await body_of(conn)
    else:
        error = await failure(conn)
        assert isinstance(error, ProtocolError)
        assert str(error).startswith("the upstream sent an invalid response: ")
    assert transport.closed
    assert not conn.reusable


@pytest.mark.parametrize("status", [b"000", b"099", b"600", b"999"])
async def test_status_outside_100_to_599_is_a_protocol_error(status: bytes) -> None:
    """A status no HTTP client accepts is refused as a ProtocolError naming it, never kept."""
    conn, transport = await connected()
    error = await failure(conn, b"HTTP/1.1 " + status + b" Odd\r\nContent-Length: 2\r\n\r\nok")
    assert isinstance(error, ProtocolError)
    assert str(error) == f"the upstream sent status {status.decode()}"
    assert conn.status == 0
    assert transport.closed
    assert not conn.reusable


async def test_a_protocol_switch_is_a_protocol_error() -> None:
    """A 101 Switching Protocols (never asked for) fails the exchange."""
    conn, _ = await connected()
    error = await failure(
        conn, b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n"
    )
    assert isinstance(error, ProtocolError)
    assert str(error) == "the upstream switched protocols"


async def test_silence_before_the_headers_is_a_read_timeout() -> None:
    """No answer within the timeout is a ReadTimeout naming the wait for the headers."""
    conn, transport = await connected()
    with pytest.raises(ReadTimeout) as caught:
        await exchange(conn, timeout=0.05)
    assert str(caught.value) == WAITING_FOR_HEADERS
    assert transport.closed


async def test_a_stalled_body_is_a_read_timeout() -> None:
    """A body that stops coming is a ReadTimeout naming the body, after the bytes that came."""
    conn, _ = await connected()
    await exchange(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    assert await conn.read_chunk(0.05) == b"abc"
    with pytest.raises(ReadTimeout) as caught:
        await conn.read_chunk(0.05)
    assert str(caught.value) == READING_BODY


async def parts(*chunks: bytes) -> AsyncIterator[bytes]:
    """A request body, chunk by chunk."""
    for chunk in chunks:
        yield chunk


async def test_a_chunked_request_body_is_framed_by_the_connection() -> None:
    """A chunked body goes out as chunks, empty parts skipped, with the last chunk at the end."""
    conn, transport = await connected()
    await conn.send(HEAD, parts(b"abc", b"", b"defgh"), True, False, 5.0)
    assert bytes(transport.written) == HEAD + b"3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n"


async def test_an_upstream_that_stops_reading_the_body_is_a_write_timeout() -> None:
    """A transport that stays paused for writing past the timeout is a WriteTimeout."""
    conn, transport = await connected()
    conn.pause_writing()
    with pytest.raises(WriteTimeout) as caught:
        await conn.send(HEAD, parts(b"x" * 10, b"y" * 10), False, False, 0.05)
    assert str(caught.value) == SENDING_BODY
    assert transport.closed
    assert bytes(transport.written) == HEAD + b"x" * 10


async def test_the_next_exchange_on_a_kept_connection_starts_clean() -> None:
    """After reset() a kept-alive connection parses its second answer from scratch."""
    conn, transport = await connected()
    await exchange(conn, b"HTTP/1.1 204 No Content\r\n\r\n")
    assert await body_of(conn) == b""
    assert conn.reusable
    conn.reset()
    await exchange(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Second: 1\r\n\r\nok")
    assert (conn.status, conn.headers[-1]) == (200, (b"X-Second", b"1"))
    assert await body_of(conn) == b"ok"
    assert bytes(transport.written) == HEAD * 2


async def test_bytes_after_a_whole_answer_end_the_connection() -> None:
    """A second answer sent behind the first adds nothing to it, and the connection is dropped."""
    conn, transport = await connected()
    await exchange(
        conn,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        b"HTTP/1.1 200 OK\r\nSet-Cookie: planted=1\r\nContent-Length: 4\r\n\r\nevil",
    )
    assert conn.headers == [(b"Content-Length", b"2")]
    assert await body_of(conn) == b"ok"
    assert not conn.reusable
    assert transport.closed


async def test_bytes_on_an_idle_connection_end_it() -> None:
    """An answer that arrives on an idle kept-alive connection makes it unusable for the next."""
    conn, transport = await connected()
    await exchange(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert await body_of(conn) == b"ok"
    reusable_before = conn.reusable
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil")
    assert reusable_before
    assert not conn.reusable
    assert transport.closed
