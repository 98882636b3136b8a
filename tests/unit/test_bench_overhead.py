"""The overhead bench's paired segment: the direct call runs beside the system, half a period off."""

from __future__ import annotations

import asyncio
import functools
import time

from bench.overhead import POOL, _paired

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class _Answering(asyncio.Protocol):
    """Answers every request head at once, noting when it came and to which server."""

    def __init__(self, name: str, seen: list[tuple[float, str]]) -> None:
        self._name = name
        self._seen = seen
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while b"\r\n\r\n" in self._buffer:
            _, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
            self._seen.append((time.perf_counter(), self._name))
            assert self._transport is not None
            self._transport.write(ANSWER)


async def test_paired_segments_interleave_the_direct_call() -> None:
    """Both lanes get every request answered, and between two requests to the system one goes
    direct."""
    loop = asyncio.get_running_loop()
    seen: list[tuple[float, str]] = []
    servers = [
        await loop.create_server(functools.partial(_Answering, name, seen), "127.0.0.1", 0)
        for name in ("system", "direct")
    ]
    system, direct = (server.sockets[0].getsockname()[1] for server in servers)
    try:
        result = await _paired(system, direct, 100.0, 0.3)
    finally:
        for server in servers:
            server.close()
    assert result["answers"] == 30
    assert result["failures"] == 0
    assert result["paired_direct_p50_ms"] > 0
    timed = [name for _, name in sorted(seen)][2 * POOL :]
    assert timed == ["system", "direct"] * 30
