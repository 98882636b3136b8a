"""The pool of keep-alive connections to the one upstream origin, and its edge.

Connections are reused last-in first-out, at most ``max_connections`` at once; a request that
finds them all busy waits at most ``pool_timeout`` for one. Every ``TransportError`` from below
leaves this module as an ``UpstreamError`` through the one table in ``answers``.

A request is sent again, once, on a fresh connection only when a kept-alive connection turned out
to be dead (closed with no byte of an answer), the request had no body, and its method is
idempotent (RFC 9110 §9.2.2): the upstream may have acted on it before closing, and only an
idempotent request can be repeated without acting twice. A POST, even without a body (an
isolation, say), is answered 502 instead.

Timeouts: ``connect`` bounds establishing a connection (TCP and TLS, in the connector); ``read``
bounds every wait for the upstream — for the response headers, between body chunks, and for the
upstream to take more of a request body; ``pool`` bounds the wait for a free connection.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Final

from yarl import URL

from proxy.errors import CallerGoneError, RefusalError
from proxy.upstream.answers import upstream_error
from proxy.upstream.connect import Connector, TCPConnector
from proxy.upstream.connection import WAITING_FOR_HEADERS, Connection
from proxy.upstream.errors import PoolTimeout, ReadTimeout, Reset, TransportError

#: RFC 9110 §9.2.2: repeating one of these has the effect of sending it once.
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


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
        except TransportError as exc:
            raise upstream_error(exc, self._pool.retry_after) from None

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
        pool_timeout: float = 5.0,
        connector: Connector | None = None,
    ) -> None:
        url = URL(origin)
        if url.host is None:
            raise ValueError(f"upstream origin without a host: {origin!r}")
        self.host = url.host
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self._host_header = url.raw_authority.encode("ascii")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.pool_timeout = pool_timeout
        #: seconds a 503 for want of a connection tells the caller to wait (an integer, ≥ 1)
        self.retry_after = max(1, math.ceil(pool_timeout))
        self._connector = connector or TCPConnector(
            self.host,
            self.port,
            ssl_context if url.scheme == "https" else None,
            connect_timeout,
        )
        self._max = max_connections
        self._keepalive = keepalive
        self._max_header_size = max_header_size
        #: idle connections and when each went idle, oldest first
        self._idle: list[tuple[Connection, float]] = []
        self._sweep: asyncio.TimerHandle | None = None
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    def retime(self, connect: float, read: float, pool: float) -> None:
        """Use these timeouts (seconds) from now on: for connections made and waits begun after
        the call; a wait already begun keeps its deadline."""
        self.connect_timeout = connect
        self.read_timeout = read
        self.pool_timeout = pool
        self.retry_after = max(1, math.ceil(pool))
        if isinstance(self._connector, TCPConnector):
            self._connector.timeout = connect

    @property
    def open_connections(self) -> int:
        """Connections open now, idle or busy."""
        return self._open

    @property
    def idle_connections(self) -> int:
        """Connections waiting in the pool for a request."""
        return len(self._idle)

    @property
    def waiting(self) -> int:
        """Requests waiting for a connection to come free."""
        return len(self._waiters)

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
            try:
                conn, reused = await self._acquire()
            except TransportError as exc:
                raise upstream_error(exc, self.retry_after) from None
            try:
                await conn.send(head, body, chunked, head_only, self.read_timeout)
                await conn.wait(
                    conn.headers_done, self.read_timeout, ReadTimeout, WAITING_FOR_HEADERS
                )
                return Response(self, conn)
            except (RefusalError, CallerGoneError):
                self._drop(conn)
                raise
            except TransportError as exc:
                self._drop(conn)
                if attempt == 1 and _resendable(exc, conn, reused, method, body):
                    continue
                raise upstream_error(exc, self.retry_after) from None
            except OSError as exc:
                self._drop(conn)
                reset = Reset(f"the connection failed while sending ({type(exc).__name__})")
                if attempt == 1 and _resendable(reset, conn, reused, method, body):
                    continue
                raise upstream_error(reset, self.retry_after) from None
            except BaseException:
                self._drop(conn)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _drop(self, conn: Connection) -> None:
        conn.close()
        self.release(conn)

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
        deadline: float | None = None
        while True:
            while self._idle:
                conn, since = self._idle.pop()
                if conn.closed or now - since > self._keepalive:
                    conn.close()
                    self._open -= 1
                    continue
                conn.reset()
                return conn, True
            if self._open < self._max:
                break
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + self.pool_timeout
            waiter = loop.create_future()
            self._waiters.append(waiter)
            timer = loop.call_at(deadline, _expire_waiter, waiter, self.pool_timeout)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self._wake_one()  # this caller was woken but leaves: pass it on
                raise
            finally:
                timer.cancel()
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
        conn = Connection(asyncio.get_running_loop(), self._max_header_size)
        await self._connector(conn)
        return conn

    async def probe(self) -> None:
        """Open one connection to the upstream as a request would (name, TCP, then TLS with the
        pool's own settings) and close it at once, sending nothing: a reachability check. Raises
        ``UpstreamError`` (its ``kind`` says what failed); the pool's connections are untouched."""
        try:
            conn = await self._connect()
        except TransportError as exc:
            raise upstream_error(exc, self.retry_after) from None
        conn.close()

    def release(self, conn: Connection) -> None:
        """Return a connection after its exchange: pooled if reusable, else closed."""
        if conn.reusable and not self._closed:
            self._idle.append((conn, time.monotonic()))
            if self._sweep is None:
                self._arm_sweep()
        else:
            conn.close()
            self._open -= 1
        self._wake_one()

    def _arm_sweep(self) -> None:
        """Sweep the idle connections when the oldest of them has been idle ``keepalive``."""
        _, oldest = self._idle[0]
        delay = max(0.0, oldest + self._keepalive - time.monotonic())
        self._sweep = asyncio.get_running_loop().call_later(delay, self._expire_idle)

    def _expire_idle(self) -> None:
        """Close the idle connections past ``keepalive`` and those the upstream closed.

        Requests take the connection that went idle last, so after a burst the ones below stay
        unused: without this sweep they, their sockets and their buffers would be kept for as long
        as the process runs, whatever ``keepalive`` says.
        """
        self._sweep = None
        now = time.monotonic()
        kept = []
        for conn, since in self._idle:
            if conn.closed or now - since >= self._keepalive:
                conn.close()
                self._open -= 1
            else:
                kept.append((conn, since))
        self._idle = kept
        if kept and not self._closed:
            self._arm_sweep()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        """Close every idle connection (busy ones close as their exchanges end)."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        while self._idle:
            conn, _ = self._idle.pop()
            conn.close()
            self._open -= 1


def _expire_waiter(waiter: asyncio.Future[None], seconds: float) -> None:
    if not waiter.done():
        waiter.set_exception(
            PoolTimeout(f"timed out waiting {seconds:g}s for a free upstream connection")
        )


def _resendable(
    error: TransportError,
    conn: Connection,
    reused: bool,
    method: str,
    body: AsyncIterator[bytes] | None,
) -> bool:
    """Whether a failed first attempt may go again on a fresh connection.

    Only a kept-alive connection found dead (closed before a byte of the answer), for a request
    without a body (a body stream cannot be replayed) whose method is idempotent.
    """
    return (
        reused
        and isinstance(error, Reset)
        and not conn.received_any
        and body is None
        and method in IDEMPOTENT
    )
