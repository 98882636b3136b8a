"""The caller side of the proxy port: aiohttp's server with deadlines and a connection cap.

aiohttp gives a caller as long as it likes to send a request head and keeps an idle connection for
an hour; a few thousand slow or silent connections then hold every file descriptor. Here:

- a caller has ``timeouts.caller`` to send a whole request head, counted from the connection's
  start or from the first byte of the head on a kept-alive connection; past it, a caller that sent
  part of a head gets a 408 in the Defender envelope, a silent one is just closed;
- an idle kept-alive connection is closed after ``timeouts.caller_keepalive`` (aiohttp's own timer);
- at most ``limits.caller_connections`` connections are open at once. A new connection past the cap
  takes the place of the connection that has waited longest without a request in progress (idle,
  or dribbling a head): real requests finish, the slowest non-working connection goes. When every
  connection has a request in progress, the new one is closed at once.

Requests aiohttp cannot parse are answered here too: a 400 in the Defender envelope and one scrubbed
log line, where aiohttp would echo the offending bytes and log a traceback. A connection that opens
with HTTP/2's preface (``curl --http2-prior-knowledge``, an h2c client) gets HTTP/2's own refusal:
an empty SETTINGS frame, then GOAWAY with ``HTTP_1_1_REQUIRED`` (RFC 9113 §3.4, §7), so the client
says why instead of failing to read an HTTP/1.1 answer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final, cast

from aiohttp import StreamReader, web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.http_parser import RawRequestMessage

from proxy.config import Settings
from proxy.errors import PROXY_HEADER, SERVER_NAME, envelope, error_response, new_target
from proxy.logs import get_logger
from proxy.metrics import Metrics

# File descriptors kept back from the cap for everything else: the upstream pool is added to it,
# then Redis, the admin port, the log stream and the interpreter's own.
_FD_RESERVE: Final = 64
# A cap derived from a very high or unlimited descriptor limit stops here.
_MAX_DERIVED_CAP: Final = 65536
_MIN_DERIVED_CAP: Final = 16
#: How long a closed caller connection goes on reading (and dropping) what the caller still sends.
LINGER: Final = 2.0


def caller_connection_cap(settings: Settings) -> int:
    """``limits.caller_connections``, or a cap derived from the process's file-descriptor limit
    less the upstream pools and a reserve, shared evenly by the listeners (the cap is each one's)."""
    if settings.limits.caller_connections:
        return settings.limits.caller_connections
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # pragma: no cover - Linux has both
        return _MAX_DERIVED_CAP
    if soft == resource.RLIM_INFINITY:
        return _MAX_DERIVED_CAP
    listeners = len(settings.listeners)
    derived = (soft - listeners * settings.pool.max_connections - _FD_RESERVE) // listeners
    return max(_MIN_DERIVED_CAP, min(_MAX_DERIVED_CAP, derived))


def _timeout_answer(target: str) -> bytes:
    # Written straight to the transport: there is no request to prepare a web.Response against,
    # only part of a head. Same envelope and headers as errors.error_response.
    body = envelope(
        "RequestTimeout", "the request head was not sent within timeouts.caller", target
    )
    return (
        b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json; charset=utf-8\r\n"
        b"Content-Length: %d\r\n%s: RequestTimeout\r\nServer: %s\r\nConnection: close\r\n\r\n%s"
        % (len(body), PROXY_HEADER.encode(), SERVER_NAME.encode(), body)
    )


class _Lingering:
    """A caller's transport whose ``close`` lingers: the answer is flushed and a FIN sent, then
    whatever the caller still sends is read and dropped until it closes too, for at most
    ``LINGER`` seconds.

    A socket closed with unread input is reset by the kernel, and a reset can overtake the
    answer already sent: a caller still writing (a pipelined request behind a refused one, the
    rest of a head) would read ``ECONNRESET`` instead of its 400 or its answer. ``abort`` still
    resets at once. Everything else is the transport's own.
    """

    def __init__(self, transport: asyncio.Transport, on_linger: Any) -> None:
        self._transport = transport
        self._on_linger = on_linger
        self._timer: asyncio.TimerHandle | None = None
        # The calls made for every answer, bound once: no wrapper on the hot path.
        self.write = transport.write
        self.writelines = transport.writelines
        self.is_closing = transport.is_closing
        self.get_extra_info = transport.get_extra_info
        self.abort = transport.abort

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        transport = self._transport
        if transport.is_closing() or self._timer is not None:
            return
        if not transport.can_write_eof():
            transport.close()
            return
        self._on_linger()
        transport.resume_reading()
        transport.write_eof()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(LINGER, transport.close)

    def closed(self) -> None:
        """The connection is gone: no timer left behind, and no reference back to the handler.

        The handler holds this object and ``on_linger`` is one of its methods: left as it is, the
        cycle keeps the handler, its parser and buffers until the cycle collector runs, which an
        idle process may not do for a long time. Broken here, they go with the connection.
        """
        if self._timer is not None:
            self._timer.cancel()
        self._on_linger = _linger_no_more


def _linger_no_more() -> None:
    """What a closed connection does when asked to linger: nothing, it is gone."""


#: What an HTTP/2 connection with prior knowledge starts with (RFC 9113 §3.4), up to the point
#: where no HTTP/1.1 request line can be the same.
H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n"
#: HTTP/2 frames (RFC 9113 §4.1, §6.5, §6.8): an empty SETTINGS, as every server's first frame
#: must be, then GOAWAY for stream 0 with error code 0xd, HTTP_1_1_REQUIRED, and a reason.
_GOAWAY_REASON: Final = b"this port speaks HTTP/1.1 only"
H2_REFUSAL: Final = (
    b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    + (8 + len(_GOAWAY_REASON)).to_bytes(3, "big")
    + b"\x07\x00\x00\x00\x00\x00"
    + b"\x00\x00\x00\x00\x00\x00\x00\x0d"
    + _GOAWAY_REASON
)


class CallerConnection(web.RequestHandler):
    """One caller connection: aiohttp's handler plus the request-head deadline."""

    def __init__(self, manager: CallerServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._callers = manager
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = False
        self._write_timer: asyncio.TimerHandle | None = None
        #: whether the caller was cut off for not taking its answer
        self.stalled = False
        #: the body of the last request parsed
        self._payload: StreamReader | None = None
        #: when the connection began to wait for its current request head (monotonic)
        self.waiting_since = 0.0
        #: no byte has come in yet: the first ones may be HTTP/2's preface
        self._fresh = True

    # The deadline for a request head

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._lingering = _Lingering(cast(asyncio.Transport, transport), self._stop_reading)
        super().connection_made(cast(asyncio.BaseTransport, self._lingering))
        self._arm_head()
        self._callers.make_room(self)

    def _stop_reading(self) -> None:
        # What comes in while the connection lingers is dropped, not parsed.
        self._close = True

    def data_received(self, data: bytes) -> None:
        if self._fresh:
            self._fresh = False
            if data.startswith(H2_PREFACE):
                self._refuse_h2()
                return
        super().data_received(data)
        if self._messages:  # a whole head (or a parse error) is queued: the deadline is met
            self._disarm_head()
            for message, payload in reversed(self._messages):
                if isinstance(message, RawRequestMessage):
                    self._payload = payload
                    break
            if not isinstance(self._messages[-1][0], RawRequestMessage):
                self._body_broken()
        elif data:
            waiter = self._waiter
            if self._head_timer is None and waiter is not None and not waiter.done():
                self._arm_head()  # the first bytes of a head on an idle kept-alive connection
            self._head_bytes = True

    def _refuse_h2(self) -> None:
        """Answer an HTTP/2 preface in HTTP/2: SETTINGS, GOAWAY HTTP_1_1_REQUIRED, then close."""
        self._disarm_head()
        transport = self.transport
        if transport is not None:
            transport.write(H2_REFUSAL)
            transport.close()

    def _body_broken(self) -> None:
        """The parser failed inside a request body (a broken chunk, say): aiohttp queues a 400 for
        after the request and leaves its body waiting for bytes that will never be parsed."""
        payload = self._payload
        if payload is None or payload.is_eof():
            return
        if self._current_request is not None:
            # The handler is still reading it: the body ends with the parser's error, never
            # as if it were whole; nothing more of it can be read, so nothing to linger over.
            error = BadHttpMessage("the request body's framing is invalid")
            payload.set_exception(error)
            # The parser may have woken the reader already in this same step: aiohttp's reader
            # looks at the error only before it waits, so wake its next wait with it too.
            self._loop.call_soon(payload.set_exception, error)
            self._lingering_time = 0.0
        else:
            # Only aiohttp's lingering read of a body the answer left unread waits on it.
            payload.feed_eof()

    # The deadline for taking an answer: armed only while the transport's buffer is full, so an
    # answer that flows costs nothing.

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self._loop.call_later(
                self._callers.caller_timeout, self._write_late
            )

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_late(self) -> None:
        self._write_timer = None
        self.stalled = True
        self._callers.metrics.caller_timeouts.labels("answer").inc()
        # The handler's write fails and it drops the upstream connection; the caller is reset.
        self._lingering.abort()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self._disarm_head()
        self._lingering.closed()
        super().connection_lost(exc)

    def _arm_head(self) -> None:
        self._head_bytes = False
        self.waiting_since = time.monotonic()
        self._head_timer = self._loop.call_later(self._callers.caller_timeout, self._head_late)

    def _disarm_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self._messages or self._request_in_progress or self.transport is None:
            return
        self._callers.metrics.caller_timeouts.labels("head").inc()
        if self._head_bytes:
            target = new_target()
            get_logger("http").warning(
                "caller cut off: no whole request head within timeouts.caller",
                status=408,
                timeout_s=self._callers.caller_timeout,
                target=target,
            )
            self.transport.write(_timeout_answer(target))
        self.force_close()

    @property
    def evictable(self) -> bool:
        """Whether the connection has no request in progress or queued (idle, or mid-head)."""
        return not self._request_in_progress and not self._messages and self.transport is not None

    def shed(self) -> None:
        """Close the connection to make room for another: at once, without lingering."""
        self._disarm_head()
        self._lingering.abort()
        self.force_close()

    # Requests aiohttp cannot parse

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had begun; the connection is closed instead")
        target = new_target()
        code = "BadRequest" if status < 500 else "InternalServerError"
        text = "the request is not valid HTTP/1.1" if status < 500 else "the proxy failed"
        get_logger("http").warning(
            "request refused by the HTTP parser",
            status=status,
            error=type(exc).__name__ if exc is not None else "",
            target=target,
        )
        response = error_response(status, code, text, target)
        response.force_close()
        return response


class CallerServer(web.Server):
    """aiohttp's low-level server for the proxy port, with the caller deadlines and the cap."""

    def __init__(
        self, handler: Any, *, caller_timeout: float, cap: int, metrics: Metrics, **kwargs: Any
    ) -> None:
        super().__init__(handler, **kwargs)
        self.caller_timeout = caller_timeout
        self.cap = cap
        self.metrics = metrics
        metrics.caller_connection_sources.add(lambda: len(self._connections))

    def retune(self, caller_timeout: float, cap: int) -> None:
        """Use a new ``timeouts.caller`` and connection cap from now on: for the deadlines armed
        and the connections made after the call. A lowered cap closes no connection by itself;
        past it, each new connection takes the place of an idle one, as at the cap."""
        self.caller_timeout = caller_timeout
        self.cap = cap

    def __call__(self) -> CallerConnection:
        return CallerConnection(self, loop=self._loop, **self._kwargs)

    def make_room(self, newcomer: CallerConnection) -> None:
        """Keep the open connections within the cap once ``newcomer`` has joined them."""
        if len(self._connections) <= self.cap:
            return
        # Linear in the open connections, and only ever run at the cap.
        victim: CallerConnection | None = None
        for connection in self._connections:
            if (
                connection is not newcomer
                and isinstance(connection, CallerConnection)
                and connection.evictable
                and (victim is None or connection.waiting_since < victim.waiting_since)
            ):
                victim = connection
        if victim is None:
            self.metrics.caller_connections_shed.labels("refused").inc()
            newcomer.shed()
        else:
            self.metrics.caller_connections_shed.labels("evicted").inc()
            victim.shed()
