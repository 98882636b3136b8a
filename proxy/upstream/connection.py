"""One HTTP/1.1 exchange at a time over one upstream connection: the state machine.

``Connection`` is an ``asyncio.Protocol``: it writes a request head and streams its body with flow
control, and reads the answer through llhttp (httptools) as bytes arrive. It knows nothing of
sockets: whatever transport the connector attached (TCP, TLS, or an in-memory one in the tests)
carries the bytes. Every failure is a ``proxy.upstream.errors`` type whose text is the cause.

What llhttp leaves to its caller is done here: interim 1xx answers are skipped, an answer to
HEAD ends at its head, a body without a length or chunked coding runs to the close (RFC 9112
§6.3), the head is bounded in size, and a status outside 100-599 is refused, never relayed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Final, cast

import httptools

from proxy.upstream.errors import (
    ProtocolError,
    ReadTimeout,
    Reset,
    Timeout,
    TransportError,
    WriteTimeout,
)

# Body bytes buffered from the upstream before reading pauses (flow control towards the upstream).
_HIGH_WATER: Final = 256 * 1024
_LOW_WATER: Final = 64 * 1024

#: Phases of an exchange, as timeout causes name them.
WAITING_FOR_HEADERS: Final = "timed out waiting for the response headers"
READING_BODY: Final = "timed out reading the response body"
SENDING_BODY: Final = "timed out sending the request body: the upstream stopped reading it"
_TOO_LARGE: Final = "the response head is over the size limit"


class Connection(asyncio.Protocol):
    """One keep-alive connection to the upstream and the response being read from it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_header_size: int) -> None:
        self._loop = loop
        self._max_header_size = max_header_size
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._error: TransportError | None = None
        self._write_ready: asyncio.Future[None] | None = None
        self._new_response()

    def _new_response(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0  # bytes received before the headers were complete
        self._header_size = 0  # bytes of the parsed header fields
        self._head_only = False
        self._interim = False
        self._eof_delimited = False
        self.headers_done: asyncio.Future[None] = self._loop.create_future()
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._body_waiter: asyncio.Future[None] | None = None
        self.complete = False
        self.keep_alive = False
        self.received_any = False

    #: Make a kept-alive connection ready for its next exchange.
    reset = _new_response

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolError("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            # The text is llhttp's own, from a fixed set (not the bytes it choked on).
            self._fail(ProtocolError(f"the upstream sent an invalid response: {exc}"))
        if not self.headers_done.done():
            # llhttp buffers an unfinished status line or header without limit: bound it here.
            self._header_bytes += len(data)
            if self._header_bytes > 2 * self._max_header_size:
                self._fail(ProtocolError(_TOO_LARGE))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done.done() and not self.complete and self._eof_delimited and exc is None:
            self.complete = True  # a body delimited by the end of the connection ended
            self._wake_body()
        elif not self.complete:
            how = "closed" if exc is None else "reset"
            when = "mid-body" if self.headers_done.done() else "before answering"
            self._fail(Reset(f"the upstream {how} the connection {when}"))
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)

    def pause_writing(self) -> None:
        if self._write_ready is None or self._write_ready.done():
            self._write_ready = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.complete:
            # Bytes after the answer was whole: nothing asked for them. Parsed on, they would add
            # headers to the answer being relayed, or wait on the idle connection to be taken
            # for the answer to the next request. The connection is dropped instead.
            self._fail(ProtocolError("the upstream sent bytes after its answer"))
            raise httptools.HttpParserError("bytes after the answer")

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_size += len(name) + len(value) + 4
        if self._header_size > self._max_header_size:
            self._fail(ProtocolError(_TOO_LARGE))
            raise httptools.HttpParserError("headers too large")
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            if status < 100:
                self._fail(ProtocolError(f"the upstream sent status {status:03d}"))
                return
            # An interim answer (103 Early Hints and the like): wait for the final one.
            self._interim = True
            self.headers = []
            self.reason = b""
            self._header_size = 0
            return
        if status > 599:
            # RFC 9110 §15: three digits, 100-599; callers' clients refuse anything else.
            self._fail(ProtocolError(f"the upstream sent status {status}"))
            return
        self.status = status
        length = any(name.lower() == b"content-length" for name, _ in self.headers)
        codings = b",".join(v for n, v in self.headers if n.lower() == b"transfer-encoding")
        chunked = codings.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        # RFC 9112 §6.3: without a length, a body not ending in chunked runs to the close.
        self._eof_delimited = not length and not chunked and status not in (204, 304)
        self.headers_done.set_result(None)
        if self._head_only:
            # llhttp cannot be told a response to HEAD has no body: end it here, and never
            # reuse the connection, so no stray bytes can be read as the next response.
            self.complete = True
            self.keep_alive = False

    def on_body(self, chunk: bytes) -> None:
        if self._head_only:
            return
        self._body.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > _HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
        self._wake_body()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._head_only or self._error is not None:
            return
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()
        self._wake_body()

    # the exchange

    def _fail(self, error: TransportError) -> None:
        if self._error is None:
            self._error = error
        if not self.headers_done.done():
            self.headers_done.set_exception(self._error)
            self.headers_done.exception()  # retrieved: a failure nobody awaits is not a bug
        self._wake_body()
        if self.transport is not None:
            self.transport.abort()

    def _wake_body(self) -> None:
        waiter = self._body_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def send(
        self,
        head: bytes,
        body: AsyncIterator[bytes] | None,
        chunked: bool,
        head_only: bool,
        timeout: float,
    ) -> None:
        """Write the request: ``head`` (request line and headers), then the body if any."""
        assert self.transport is not None
        self._head_only = head_only
        self.transport.write(head)
        if body is None:
            return
        async for chunk in body:
            if self.closed:
                break
            if chunked:
                if chunk:
                    self.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            else:
                self.transport.write(chunk)
            ready = self._write_ready
            if ready is not None and not ready.done():
                await self.wait(ready, timeout, WriteTimeout, SENDING_BODY)
                if self._error is not None:
                    raise self._error
        if chunked and not self.closed:
            self.transport.write(b"0\r\n\r\n")

    def read_ready(self) -> bytes:
        """The body bytes received and not yet read, without waiting; ``b""`` if none."""
        if not self._body:
            return b""
        chunk = b"".join(self._body) if len(self._body) > 1 else self._body[0]
        self._body.clear()
        self._buffered = 0
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
        return chunk

    async def read_chunk(self, timeout: float) -> bytes:
        """The next piece of the response body; ``b""`` at its end."""
        while True:
            if self._body:
                chunk = self._body.popleft()
                self._buffered -= len(chunk)
                if self._buffered < _LOW_WATER and self.transport is not None and not self.closed:
                    self.transport.resume_reading()
                return chunk
            if self.complete:
                return b""
            if self._error is not None:
                raise self._error
            self._body_waiter = self._loop.create_future()
            try:
                await self.wait(self._body_waiter, timeout, ReadTimeout, READING_BODY)
            finally:
                self._body_waiter = None

    async def wait(
        self, future: asyncio.Future[None], timeout: float, error: type[Timeout], cause: str
    ) -> None:
        """Await ``future``; after ``timeout`` the exchange fails with ``error(cause)``.

        One timer handle, where ``asyncio.timeout`` would add a context manager and a task
        cancellation on every exchange.
        """
        timer = self._loop.call_later(timeout, self._expire, future, error, cause)
        try:
            await future
        finally:
            timer.cancel()

    def _expire(self, future: asyncio.Future[None], error: type[Timeout], cause: str) -> None:
        if not future.done():  # the answer may have come in the timer's own loop iteration
            self._fail(error(cause))
            if not future.done():
                future.set_exception(self._error or error(cause))

    @property
    def reusable(self) -> bool:
        """Whether the connection can carry another request."""
        return self.complete and self.keep_alive and not self.closed and self._error is None

    def close(self) -> None:
        """Drop the connection."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
