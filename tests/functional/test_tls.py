"""TLS to the upstream: verified against a CA bundle, against the system CAs, or not at all."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from proxy import app as wiring
from proxy import forward
from proxy.config import Address, Settings, Timeouts, Tls, Upstream
from proxy.errors import PROXY_HEADER
from proxy.forward import tls_context
from proxy.simulator import SimConfig, make_app
from tests.conftest import Stack

MACHINES = (
    b'{"@odata.context":"https://api.security.microsoft.com/api/$metadata#Machines","value":[]}'
)
FAILURES = "defender_proxy_upstream_failures_total"
ROUTE = "machines.list"


@pytest.fixture
def ca() -> trustme.CA:
    """A throwaway certificate authority no system trusts."""
    return trustme.CA()


@pytest.fixture
def ca_bundle(ca: trustme.CA, tmp_path: Path) -> str:
    """The CA's certificate as a PEM file."""
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


async def serve_tls(aiohttp_server: AiohttpServer, ca: trustme.CA, *names: str) -> TestServer:
    """The simulator over TLS with a certificate the CA issued for ``names``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    server: TestServer = await aiohttp_server(make_app(SimConfig()), ssl=context)
    return server


@pytest.fixture
async def tls_simulator(aiohttp_server: AiohttpServer, ca: trustme.CA) -> TestServer:
    """The simulator over TLS, its certificate naming 127.0.0.1 and localhost."""
    return await serve_tls(aiohttp_server, ca, "127.0.0.1", "localhost")


async def assert_tls_failure(stack: Stack, kind: str, cause: str) -> None:
    """One request gets the proxy's 502, counted once under ``kind``, logged with ``cause``."""
    response = await stack.client.get("/api/machines")
    assert response.status == 502
    error = (await response.json())["error"]
    assert error["code"] == "BadGateway"
    assert response.headers[PROXY_HEADER] == "BadGateway"
    assert stack.sample(FAILURES, route=ROUTE, kind=kind) == 1
    assert stack.sample(FAILURES, route=ROUTE, kind="connect") == 0
    [line] = stack.logs.lines("request")
    assert (line["status"], line["code"], line["target"]) == (502, "BadGateway", error["target"])
    assert (line["kind"], line["cause"]) == (kind, cause)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_upstream_verified_against_the_ca_bundle(
    make_stack: Any, tls_simulator: TestServer, ca_bundle: str, host: str
) -> None:
    """With the issuing CA as ca_bundle, a certificate for the URL's host (IP or name) is accepted."""
    stack: Stack = await make_stack(
        upstream=f"https://{host}:{tls_simulator.port}", tls=Tls(verify=True, ca_bundle=ca_bundle)
    )
    response = await stack.client.get("/api/machines")
    assert response.status == 200
    assert await response.read() == MACHINES
    assert PROXY_HEADER not in response.headers
    assert stack.sample(FAILURES, route=ROUTE, kind="tls") == 0


async def test_unknown_ca_is_a_tls_failure(make_stack: Any, tls_simulator: TestServer) -> None:
    """Verified against the system CAs only, a private CA's certificate is a tls_verify 502."""
    stack: Stack = await make_stack(
        upstream=f"https://127.0.0.1:{tls_simulator.port}", tls=Tls(verify=True)
    )
    await assert_tls_failure(
        stack, "tls_verify", "certificate verify failed: unable to get local issuer certificate"
    )


async def test_certificate_for_another_host_is_a_tls_failure(
    make_stack: Any, aiohttp_server: AiohttpServer, ca: trustme.CA, ca_bundle: str
) -> None:
    """A trusted certificate that does not name the upstream's host is a tls_verify 502."""
    server = await serve_tls(aiohttp_server, ca, "api.example.test")
    stack: Stack = await make_stack(
        upstream=f"https://127.0.0.1:{server.port}", tls=Tls(verify=True, ca_bundle=ca_bundle)
    )
    await assert_tls_failure(
        stack,
        "tls_verify",
        "certificate verify failed: IP address mismatch, certificate is not valid for '127.0.0.1'.",
    )


async def test_plain_http_behind_https_is_a_wrong_protocol(
    make_stack: Any, simulator: TestServer, ca_bundle: str
) -> None:
    """A plain-HTTP server behind an https:// upstream is a tls_protocol 502, not a verify one."""
    stack: Stack = await make_stack(
        upstream=f"https://127.0.0.1:{simulator.port}", tls=Tls(verify=True, ca_bundle=ca_bundle)
    )
    await assert_tls_failure(
        stack,
        "tls_protocol",
        "the upstream did not answer in TLS (wrong version number): "
        "plain HTTP behind an https:// upstream?",
    )


async def test_silent_server_behind_https_times_out_in_the_handshake(
    make_stack: Any, ca_bundle: str
) -> None:
    """A server that accepts TCP but never answers the ClientHello is a 504 naming the handshake."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        stack: Stack = await make_stack(
            upstream=f"https://127.0.0.1:{port}",
            tls=Tls(verify=True, ca_bundle=ca_bundle),
            timeouts=Timeouts(connect=0.3, read=2.0),
        )
        response = await stack.client.get("/api/machines")
        assert response.status == 504
        assert (await response.json())["error"]["code"] == "GatewayTimeout"
        assert stack.sample(FAILURES, route=ROUTE, kind="connect_timeout") == 1
        [line] = stack.logs.lines("request")
        assert line["cause"] == "timed out in the TLS handshake (0.3s)"
        assert len(accepted) == 1
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_verify_false_accepts_any_certificate(
    make_stack: Any, tls_simulator: TestServer
) -> None:
    """With verify off, the untrusted certificate is accepted and the request goes through."""
    stack: Stack = await make_stack(
        upstream=f"https://127.0.0.1:{tls_simulator.port}", tls=Tls(verify=False)
    )
    response = await stack.client.get("/api/machines")
    assert response.status == 200
    assert await response.read() == MACHINES


async def test_listeners_share_one_tls_context(
    aiohttp_server: AiohttpServer,
    aiohttp_raw_server: Callable[..., Any],
    aiohttp_client: Callable[..., Any],
    ca: trustme.CA,
    ca_bundle: str,
    base_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two https upstreams in one process are verified through one TLS context, made once."""
    first = await serve_tls(aiohttp_server, ca, "127.0.0.1")
    second = await serve_tls(aiohttp_server, ca, "127.0.0.1")
    made: list[ssl.SSLContext] = []

    def counted(settings: Settings) -> ssl.SSLContext:
        context = tls_context(settings)
        made.append(context)
        return context

    monkeypatch.setattr(forward, "tls_context", counted)
    listen = Address("127.0.0.1", 0)
    upstreams = tuple(
        Upstream(name, f"https://127.0.0.1:{server.port}", listen, "all")
        for name, server in (("one", first), ("two", second))
    )
    settings = replace(
        base_settings, upstreams=upstreams, tls=Tls(verify=True, ca_bundle=ca_bundle)
    )
    proxies, admin = wiring.build(settings)
    await aiohttp_client(admin)
    assert len(made) == 1
    for proxy in proxies:
        client = await aiohttp_client(await aiohttp_raw_server(proxy.handle))
        response = await client.get("/api/machines")
        assert response.status == 200
        assert await response.read() == MACHINES
