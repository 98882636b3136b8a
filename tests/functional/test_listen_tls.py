"""HTTPS on the proxy port, with real handshakes: the proxy's production server class behind the
context of a ``ServerTls``, as ``serve`` wires it, in front of the simulator.

A rotated pair serves new handshakes while a connection opened before keeps its own and goes on
working; TLS 1.1 and plain HTTP are refused at the handshake and the port serves on; ALPN picks
http/1.1; paging links name https."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy import app as wiring
from proxy.config import Settings, Timeouts
from proxy.listen_tls import ServerTls
from tests.conftest import LogCapture
from tests.httpraw import RawResponse, read_response
from tests.tlsfiles import SecretDir, der_serial, issue, serial

GET = b"GET /api/machines HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@dataclass
class Https:
    """The proxy on an HTTPS port, its ServerTls, the files it watches and the CA that signs them."""

    port: int
    tls: ServerTls
    secret: SecretDir
    ca: trustme.CA
    logs: LogCapture

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture
async def https(
    simulator: TestServer, tmp_path: Path, captured_logs: LogCapture
) -> AsyncIterator[Https]:
    """The proxy in front of the simulator, serving a first leaf over HTTPS on a free port."""
    ca = trustme.CA()
    secret = SecretDir(tmp_path / "tls")
    secret.put(issue(ca, "first"))
    settings = Settings(
        upstream=f"http://127.0.0.1:{simulator.port}",
        listen_tls=secret.files,
        timeouts=Timeouts(connect=1.0, read=5.0),
    )
    (proxy,), admin = wiring.build(settings)
    resources = web.AppRunner(admin)
    await resources.setup()  # the admin app's cleanup context opens the pool and the quota
    tls = ServerTls("default", secret.files, proxy.metrics)
    runner = web.ServerRunner(wiring.proxy_server(proxy))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.context).start()
    try:
        yield Https(int(runner.addresses[0][1]), tls, secret, ca, captured_logs)
    finally:
        await runner.cleanup()
        await resources.cleanup()


async def _connect(
    port: int, context: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
    )


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> RawResponse:
    writer.write(GET)
    await writer.drain()
    return await asyncio.wait_for(read_response(reader), 5)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    # The peer may have gone already: what matters is that the transport is released.
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _fresh_get(https: Https) -> int:
    """The status of a GET on a new HTTPS connection, closed after."""
    reader, writer = await _connect(https.port, https.client_context())
    try:
        return (await _get(reader, writer)).status
    finally:
        await _close(writer)


def _peer_serial(writer: asyncio.StreamWriter) -> int:
    ssl_object = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True)
    assert der is not None
    return der_serial(der)


async def test_a_rotated_pair_serves_new_connections_and_open_ones_keep_theirs(
    https: Https,
) -> None:
    """After a kubelet-style rotation a new connection gets the new leaf, while a kept-alive
    connection opened before it still has the old one and its next request is answered."""
    context = https.client_context()
    before = await _connect(https.port, context)
    assert (await _get(*before)).status == 200
    old = _peer_serial(before[1])
    rotated = issue(https.ca, "second")
    https.secret.put(rotated)
    assert https.tls.check() is True
    after = await _connect(https.port, context)
    assert (await _get(*after)).status == 200
    assert _peer_serial(after[1]) == serial(rotated) != old
    # The connection made before the rotation: same TLS session, still served.
    assert (await _get(*before)).status == 200
    assert _peer_serial(before[1]) == old
    for _, writer in (before, after):
        await _close(writer)
    assert [line["status"] for line in https.logs.lines("request")] == [200, 200, 200]


async def test_a_tls_1_1_client_is_refused(https: Https, tmp_path: Path) -> None:
    """A client that offers at most TLS 1.1 fails its handshake; the same client completes one
    with a server that allows 1.1, so the refusal is the proxy's minimum, not the client's lack."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1 and TLSv1_1 are deprecated
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        https.ca.configure_trust(old)
        lenient = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        lenient.minimum_version = ssl.TLSVersion.TLSv1
        lenient.set_ciphers("DEFAULT:@SECLEVEL=0")
        lenient.load_cert_chain(https.tls.files.cert, https.tls.files.key)

    async def shake(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    control = await asyncio.start_server(shake, "127.0.0.1", 0, ssl=lenient)
    async with control:
        port = control.sockets[0].getsockname()[1]
        _, writer = await _connect(port, old)
        assert writer.get_extra_info("ssl_object").version() == "TLSv1.1"
        await _close(writer)
    # uvloop (as asyncio) closes a failed handshake without flushing OpenSSL's alert: the client
    # reads a reset where it would read "protocol version".
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await _connect(https.port, old)
    assert await _fresh_get(https) == 200


async def test_plain_http_on_the_https_port_fails_the_handshake_and_the_port_serves_on(
    https: Https,
) -> None:
    """A plain GET on the HTTPS port gets no HTTP answer and a closed connection; it is never a
    request, nothing is logged as an error, and the next HTTPS caller is served."""
    reader, writer = await asyncio.open_connection("127.0.0.1", https.port)
    writer.write(GET)
    await writer.drain()
    received = await asyncio.wait_for(reader.read(), 5)
    await _close(writer)
    assert not received.startswith(b"HTTP/")
    assert await _fresh_get(https) == 200
    assert len(https.logs.lines("request")) == 1
    assert not [line for line in https.logs.lines() if line["level"] in ("error", "critical")]


async def test_alpn_settles_on_http_1_1(https: Https) -> None:
    """A client offering h2 and http/1.1 gets http/1.1; one offering only h2 gets no protocol
    and is still served HTTP/1.1 (the port never speaks h2)."""
    both = https.client_context()
    both.set_alpn_protocols(["h2", "http/1.1"])
    reader, writer = await _connect(https.port, both)
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
    assert (await _get(reader, writer)).status == 200
    await _close(writer)
    h2 = https.client_context()
    h2.set_alpn_protocols(["h2"])
    reader, writer = await _connect(https.port, h2)
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() is None
    assert (await _get(reader, writer)).status == 200
    await _close(writer)


async def test_paging_links_name_https(https: Https) -> None:
    """On an HTTPS listener the rewritten @odata.nextLink sends the next page to https://."""
    reader, writer = await _connect(https.port, https.client_context())
    writer.write(
        b"GET /v1.0/security/alerts_v2?$top=2 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % https.port
    )
    await writer.drain()
    response = await asyncio.wait_for(read_response(reader), 5)
    await _close(writer)
    assert response.status == 200
    link = orjson.loads(response.body)["@odata.nextLink"]
    assert link.startswith(f"https://127.0.0.1:{https.port}/v1.0/security/alerts_v2?")
