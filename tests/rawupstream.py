"""A recording upstream for framing tests: h11 parses every request the proxy sends, strictly.

h11 is an HTTP/1.1 implementation independent of the proxy's parsers (llhttp on both sides), so
what it records is what a correct origin server would make of the proxy's bytes. Every request it
parses is recorded whole (method, target, headers, body) and answered 200 with a body that names
the request (its sequence number and target), so a caller can tell whose answer it got. A request
h11 cannot parse is recorded as an error and answered 400; a request the connection ends in the
middle of is recorded as partial.

``Recording`` holds one test case's events; ``RawUpstream.reset`` starts a new one. A connection
records into the recording that was current when it was accepted, so a late byte on an old
connection can never land in a later case.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import cast

import h11

# An upstream answer's body: "echo <seq> <method> <target>".
ECHO = b"echo %d %s %s"


@dataclass
class UpstreamRequest:
    """One request as h11 parsed it; ``complete`` once its whole body arrived."""

    seq: int
    connection: int
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytearray = field(default_factory=bytearray)
    complete: bool = False
    answer: bytes = b""

    def values(self, name: str) -> list[str]:
        """The values of every header line called ``name`` (lower case)."""
        return [value for key, value in self.headers if key == name]


@dataclass
class Recording:
    """What the upstream parsed during one case, in order of arrival."""

    requests: list[UpstreamRequest] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    connections: int = 0
    open: int = 0

    @property
    def complete(self) -> list[UpstreamRequest]:
        """The requests h11 parsed to their end."""
        return [r for r in self.requests if r.complete]

    @property
    def partial(self) -> list[UpstreamRequest]:
        """The requests whose connection ended before their end."""
        return [r for r in self.requests if not r.complete]


class _Connection(asyncio.Protocol):
    """One connection from the proxy, parsed by h11 and answered request by request."""

    def __init__(self, recording: Recording) -> None:
        self._recording = recording
        self._h11 = h11.Connection(h11.SERVER)
        self._transport: asyncio.Transport | None = None
        self._current: UpstreamRequest | None = None
        self._closed = False
        recording.connections += 1
        recording.open += 1
        self._index = recording.connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._h11.receive_data(data)
        self._pump()

    def eof_received(self) -> bool:
        self._closed = True
        self._h11.receive_data(b"")
        self._pump()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._recording.open -= 1

    def _pump(self) -> None:
        transport = self._transport
        assert transport is not None
        while not transport.is_closing():
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                if self._closed and self._current is not None:
                    return  # the connection ended inside a request: recorded as partial
                self._recording.errors.append(f"connection {self._index}: h11 refused: {exc}")
                transport.write(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                transport.close()
                return
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED:
                if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
                    self._h11.start_next_cycle()
                    continue
                return
            if isinstance(event, h11.Request):
                self._current = UpstreamRequest(
                    seq=len(self._recording.requests) + 1,
                    connection=self._index,
                    method=event.method.decode("latin-1"),
                    target=event.target.decode("latin-1"),
                    headers=[(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers],
                )
                self._recording.requests.append(self._current)
            elif isinstance(event, h11.Data):
                assert self._current is not None
                self._current.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert self._current is not None
                self._answer(transport, self._current)
            elif isinstance(event, h11.ConnectionClosed):
                transport.close()
                return

    def _answer(self, transport: asyncio.Transport, request: UpstreamRequest) -> None:
        request.complete = True
        request.answer = ECHO % (request.seq, request.method.encode(), request.target.encode())
        self._current = None
        head = h11.Response(
            status_code=200,
            headers=[("Content-Type", "text/plain"), ("Content-Length", str(len(request.answer)))],
        )
        out = b"".join(
            self._h11.send(event) or b""
            for event in (head, h11.Data(data=request.answer), h11.EndOfMessage())
        )
        transport.write(out)
        if self._h11.our_state is h11.MUST_CLOSE:
            transport.close()


class RawUpstream:
    """An asyncio server on 127.0.0.1 that records into the current ``Recording``."""

    def __init__(self) -> None:
        self.recording = Recording()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self.recording), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def reset(self) -> Recording:
        """Start a new recording; the one that ends is returned."""
        ended, self.recording = self.recording, Recording()
        return ended

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
