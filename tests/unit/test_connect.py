"""The TCP connector over real loopback sockets: each way of not connecting is its own error."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from proxy.upstream import (
    Connection,
    ConnectRefused,
    ConnectTimeout,
    NameResolution,
    TCPConnector,
)
from tests.support.ports import free_port


def fresh() -> Connection:
    """A connection for the connector to attach a transport to."""
    return Connection(asyncio.get_running_loop(), 16384)


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A port whose listen queue is full: the kernel drops further SYNs, so connecting hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port: int = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_a_connection_is_attached_to_the_protocol() -> None:
    """Connecting to a listener attaches the transport to the given connection."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        conn = fresh()
        await TCPConnector("127.0.0.1", port, None, 1.0)(conn)
        assert conn.transport is not None
        conn.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_refused_port_is_connect_refused() -> None:
    """A port with nothing listening is ConnectRefused naming the address."""
    port = free_port()
    with pytest.raises(ConnectRefused) as caught:
        await TCPConnector("127.0.0.1", port, None, 1.0)(fresh())
    assert str(caught.value) == f"connection refused by 127.0.0.1:{port}"


async def test_an_unresolvable_name_is_name_resolution() -> None:
    """A .invalid name (RFC 6761: never resolves) is NameResolution naming the host."""
    with pytest.raises(NameResolution) as caught:
        await TCPConnector("upstream.invalid", 443, None, 1.0)(fresh())
    assert str(caught.value).startswith("name resolution failed for upstream.invalid: ")


async def test_a_connect_that_hangs_is_a_connect_timeout(full_backlog: int) -> None:
    """A SYN nobody answers is a ConnectTimeout in the connecting phase, not the TLS one."""
    with pytest.raises(ConnectTimeout) as caught:
        await TCPConnector("127.0.0.1", full_backlog, None, 0.2)(fresh())
    assert str(caught.value) == "timed out connecting (0.2s)"
