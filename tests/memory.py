"""An in-memory transport and a scripted upstream for the upstream client, with no sockets.

``MemoryTransport`` stands where TCP or TLS would: it keeps what the connection writes and tells
it of a close a tick later, as a real transport does. ``ScriptedUpstream`` is a connector for the
pool whose "server" answers each request head with the bytes its script returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.upstream import Connection


class MemoryTransport(asyncio.Transport):
    """A transport that keeps what is written and tells its protocol of a close a tick later."""

    def __init__(
        self, protocol: asyncio.Protocol, on_write: Callable[[bytes], None] | None = None
    ) -> None:
        super().__init__()
        self.protocol = protocol
        self.written = bytearray()
        self.closed = False
        self.reading = True
        self._on_write = on_write

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data
        if self._on_write is not None:
            self._on_write(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def close(self) -> None:
        self.abort()

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading


#: What the scripted server does with request ``n`` (from 0) on connection ``c`` (from 0):
#: the bytes to answer with, or None to close the connection without a word.
Script = Callable[[int, int, bytes], bytes | None]

OK: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class ScriptedUpstream:
    """A connector whose connections are answered by ``script``; it records every request head."""

    script: Script
    heads: list[tuple[int, bytes]] = field(default_factory=list)
    transports: list[MemoryTransport] = field(default_factory=list)

    async def __call__(self, conn: Connection) -> None:
        index = len(self.transports)
        seen: list[bytes] = []
        buffer = bytearray()
        loop = asyncio.get_running_loop()

        def on_write(data: bytes) -> None:
            buffer.extend(data)
            while (end := buffer.find(b"\r\n\r\n")) >= 0:
                head = bytes(buffer[: end + 4])
                del buffer[: end + 4]
                self.heads.append((index, head))
                answer = self.script(index, len(seen), head)
                seen.append(head)
                if answer is None:
                    transport.abort()
                else:
                    loop.call_soon(conn.data_received, answer)

        transport = MemoryTransport(conn, on_write)
        self.transports.append(transport)
        conn.connection_made(transport)

    @property
    def connections(self) -> int:
        """Connections made so far."""
        return len(self.transports)
