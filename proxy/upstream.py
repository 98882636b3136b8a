"""The connection pool to the one upstream origin, and HTTP/1.1 exchanges over it.

A lean client made for a proxy: headers go out as the caller's raw bytes (less the hop-by-hop ones
the forward module drops), bodies are streamed in both directions with flow control, nothing is
decompressed, and every failure is an ``UpstreamError`` with a closed ``kind``. Responses are
parsed by llhttp (through httptools). Connections are kept alive and reused last-in first-out; a
reused connection that turns out to be closed is retried once on a fresh one when nothing of the
request body was sent, which is always safe.

Timeouts: ``connect`` bounds establishing a connection (TCP and TLS); ``read`` bounds every wait
for the upstream — for the response headers, and between body chunks.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Final, cast

import httptools
from yarl import URL

from proxy.errors import CallerGoneError, RefusalError, UpstreamError

# Body bytes buffered from the upstream before reading pauses (flow control towards the upstream).
_HIGH_WATER: Final = 256 * 1024
_LOW_WATER: Final = 64 * 1024


class _ConnectionError(Exception):
    """A connection-level failure inside this module, mapped to ``UpstreamError`` at the edge."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class Connection(asyncio.Protocol):
    """One keep-alive connection to the upstream and the response being read from it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_header_size: int) -> None:
        self._loop = loop
        self._max_header_size = max_header_size
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._error: _ConnectionError | None = None
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

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(_ConnectionError("other", "the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            if self._error is None:
                self._fail(
                    _ConnectionError("other", f"the upstream sent an invalid response: {exc}")
                )
        if not self.headers_done.done():
            # llhttp buffers an unfinished status line or header without limit: bound it here.
            self._header_bytes += len(data)
            if self._header_bytes > 2 * self._max_header_size:
                self._fail(
                    _ConnectionError("other", "the upstream's response headers are too large")
                )

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done.done() and not self.complete and self._eof_delimited and exc is None:
            self.complete = True  # a body delimited by the end of the connection ended
            self._wake_body()
        elif not self.complete:
            self._fail(_ConnectionError("reset", "the upstream closed the connection"))
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)

    def pause_writing(self) -> None:
        if self._write_ready is None or self._write_ready.done():
            self._write_ready = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._write_ready is not None and not self._write_ready.done():
            self._write_ready.set_result(None)

    # httptools callbacks

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_size += len(name) + len(value) + 4
        if self._header_size > self._max_header_size:
            self._fail(_ConnectionError("other", "the upstream's response headers are too large"))
            raise httptools.HttpParserError("headers too large")
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # An interim answer (103 Early Hints and the like): wait for the final one.
            self._interim = True
            self.headers = []
            self.reason = b""
            self._header_size = 0
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
        if self._head_only:
            return
        self.complete = True
        self.keep_alive = self._parser.should_keep_alive()
        self._wake_body()

    # the exchange

    def _fail(self, error: _ConnectionError) -> None:
        if self._error is None:
            self._error = error
        if not self.headers_done.done():
            self.headers_done.set_exception(error)
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
        if body is None:
            self.transport.write(head)
            return
        self.transport.write(head)
        async for chunk in body:
            if self.closed:
                break
            if chunked:
                if chunk:
                    self.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            else:
                self.transport.write(chunk)
            if self._write_ready is not None and not self._write_ready.done():
                try:
                    async with asyncio.timeout(timeout):
                        await self._write_ready
                except TimeoutError:
                    self._fail(_ConnectionError("timeout", "the upstream stopped reading the body"))
                    raise self._error from None  # type: ignore[misc]
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
                await self.wait(self._body_waiter, timeout, "the upstream stopped sending the body")
            finally:
                self._body_waiter = None

    async def wait(self, future: asyncio.Future[None], timeout: float, what: str) -> None:
        """Await ``future``; after ``timeout`` the exchange fails as a timeout saying ``what``.

        One timer handle, where ``asyncio.timeout`` would add a context manager and a task
        cancellation on every exchange.
        """
        timer = self._loop.call_later(timeout, self._expire, future, what)
        try:
            await future
        finally:
            timer.cancel()

    def _expire(self, future: asyncio.Future[None], what: str) -> None:
        if not future.done():  # the answer may have come in the timer's own loop iteration
            self._fail(_ConnectionError("timeout", what))

    @property
    def reusable(self) -> bool:
        """Whether the connection can carry another request."""
        return self.complete and self.keep_alive and not self.closed and self._error is None

    def close(self) -> None:
        """Drop the connection."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Response:
    """An upstream response whose headers have arrived; the body is read with ``read``."""

    __slots__ = ("_conn", "_pool", "_released", "headers", "reason", "status")

    def __init__(self, pool: Pool, conn: Connection) -> None:
        self._pool = pool
        self._conn = conn
        self._released = False
        self.status = conn.status
        self.reason = conn.reason.decode("latin-1")
        self.headers = conn.headers

    async def read(self) -> bytes:
        """The next piece of the body, ``b""`` at its end; ``UpstreamError`` if it breaks off."""
        try:
            return await self._conn.read_chunk(self._pool.read_timeout)
        except _ConnectionError as exc:
            raise UpstreamError(502, "BadGateway", str(exc), exc.kind) from None

    def read_ready(self) -> bytes:
        """The body bytes already received, without waiting (``b""`` if none: not the end)."""
        return self._conn.read_ready()

    def release(self) -> None:
        """Give the connection back to the pool (or drop it if it cannot be reused)."""
        if not self._released:
            self._released = True
            self._pool.release(self._conn)

    def close(self) -> None:
        """Drop the connection: the rest of the body will not be read."""
        if not self._released:
            self._released = True
            self._conn.close()
            self._pool.release(self._conn)


class Pool:
    """Keep-alive connections to the one upstream origin, at most ``max_connections`` at once."""

    def __init__(
        self,
        origin: str,
        *,
        ssl_context: ssl.SSLContext | None,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
        keepalive: float,
        max_header_size: int,
    ) -> None:
        url = URL(origin)
        if url.host is None:
            raise ValueError(f"upstream origin without a host: {origin!r}")
        self.host = url.host
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self._host_header = url.raw_authority.encode("ascii")
        self._ssl = ssl_context if url.scheme == "https" else None
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._max = max_connections
        self._keepalive = keepalive
        self._max_header_size = max_header_size
        self._idle: list[tuple[Connection, float]] = []
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    @property
    def open_connections(self) -> int:
        """Connections open now, idle or busy."""
        return self._open

    @property
    def idle_connections(self) -> int:
        """Connections waiting in the pool for a request."""
        return len(self._idle)

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: AsyncIterator[bytes] | None,
        chunked: bool,
    ) -> Response:
        """Send one request and wait for the response headers."""
        chunked = chunked and body is not None
        head = self._head(method, target, headers, chunked)
        head_only = method == "HEAD"
        for attempt in (1, 2):
            conn, reused = await self._acquire()
            try:
                await conn.send(head, body, chunked, head_only, self.read_timeout)
                await conn.wait(conn.headers_done, self.read_timeout, _message("timeout"))
                return Response(self, conn)
            except (RefusalError, CallerGoneError):
                conn.close()
                self.release(conn)
                raise
            except _ConnectionError as exc:
                conn.close()
                self.release(conn)
                # A kept-alive connection the upstream had already closed: nothing of this
                # request was processed, so one retry on a fresh connection is safe.
                if exc.kind == "timeout":
                    raise UpstreamError(504, "GatewayTimeout", str(exc), "timeout") from None
                if attempt == 1 and reused and body is None and not conn.received_any:
                    continue
                raise UpstreamError(502, "BadGateway", _message(exc.kind), exc.kind) from None
            except (ConnectionError, OSError):
                conn.close()
                self.release(conn)
                if attempt == 1 and reused and body is None and not conn.received_any:
                    continue
                raise UpstreamError(502, "BadGateway", _message("reset"), "reset") from None
            except BaseException:
                conn.close()
                self.release(conn)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _head(
        self, method: str, target: str, headers: list[tuple[bytes, bytes]], chunked: bool
    ) -> bytes:
        lines = [
            b"%s %s HTTP/1.1\r\nHost: %s\r\n"
            % (method.encode(), target.encode(), self._host_header)
        ]
        lines.extend(b"%s: %s\r\n" % pair for pair in headers)
        if chunked:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    async def _acquire(self) -> tuple[Connection, bool]:
        now = time.monotonic()
        while True:
            while self._idle:
                conn, since = self._idle.pop()
                if conn.closed or now - since > self._keepalive:
                    conn.close()
                    self._open -= 1
                    continue
                conn._new_response()
                return conn, True
            if self._open < self._max:
                break
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # this caller was woken but leaves: pass it on
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            now = time.monotonic()
        self._open += 1
        try:
            return await self._connect(), False
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(loop, self._max_header_size),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                )
        except TimeoutError:
            raise UpstreamError(
                504, "GatewayTimeout", "timed out connecting to the upstream", "timeout"
            ) from None
        except ssl.SSLError:
            raise UpstreamError(502, "BadGateway", "TLS with the upstream failed", "tls") from None
        except OSError:
            raise UpstreamError(
                502, "BadGateway", "the upstream could not be reached", "connect"
            ) from None
        return conn

    def release(self, conn: Connection) -> None:
        """Return a connection after its exchange: pooled if reusable, else closed."""
        if conn.reusable and not self._closed:
            self._idle.append((conn, time.monotonic()))
        else:
            conn.close()
            self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        """Close every idle connection (busy ones close as their exchanges end)."""
        self._closed = True
        while self._idle:
            conn, _ = self._idle.pop()
            conn.close()
            self._open -= 1


def _message(kind: str) -> str:
    if kind == "reset":
        return "the upstream closed the connection before answering"
    if kind == "timeout":
        return "the upstream did not answer in time"
    return "the upstream sent an invalid response"
