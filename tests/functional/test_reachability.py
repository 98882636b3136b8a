"""Each upstream's reachability: real connects to a real port, in /readyz and its gauge.

The checks run against real sockets: an upstream that listens, the same port with nothing
listening on it (connections refused), and TLS servers with certificates from a throwaway CA. The
tests call the checks themselves, or run them every few tens of milliseconds: nothing sleeps for
the production interval.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from proxy import app as wiring
from proxy.config import Address, Settings, Timeouts, Tls, Upstream
from proxy.handler import Proxy
from proxy.metrics import Metrics
from proxy.reachability import FAILURES_TO_DOWN, Watch
from proxy.simulator import SimConfig, make_app

GAUGE = "defender_proxy_upstream_reachable"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextmanager
def port_that_refuses() -> Iterator[socket.socket]:
    """A loopback port held by a socket that is bound but not listening: connects are refused
    until ``listen()`` is called on it."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    try:
        yield holder
    finally:
        holder.close()


async def _watch(settings: Settings, clock: Clock) -> tuple[Proxy, Watch, Metrics]:
    """The listener of ``settings`` with its pool open, and a watch on its upstream."""
    metrics = Metrics()
    proxy = Proxy(settings, metrics)
    await proxy.start()
    watch = Watch(
        [(proxy.upstream.name, proxy.upstream.origin, proxy.probe)],
        metrics.upstream_reachable,
        clock=clock,
    )
    return proxy, watch, metrics


def _gauge(metrics: Metrics, upstream: str = "default") -> float | None:
    return metrics.registry.get_sample_value(GAUGE, {"upstream": upstream})


async def test_an_upstream_going_away_is_unreachable_after_three_failures_and_back_after_one(
    base_settings: Settings,
) -> None:
    """Listening: reachable; nothing listening: still reachable until the third failure in a row,
    then unreachable (kind refused); listening again: reachable after one check."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clock = Clock()
    proxy, watch, metrics = await _watch(
        replace(base_settings, upstream=f"http://127.0.0.1:{port}"), clock
    )
    [state] = watch.states
    try:
        assert watch.views()[0]["last_checked_s"] is None
        await watch.check()
        assert (state.reachable, state.failures, state.error) == (True, 0, "")
        assert _gauge(metrics) == 1
        server.close()
        await server.wait_closed()
        holder = socket.socket()
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", port))  # the same port, nothing listening on it
        try:
            for failures in range(1, FAILURES_TO_DOWN):
                await watch.check()
                assert (state.reachable, state.failures) == (True, failures)
                assert _gauge(metrics) == 1
            await watch.check()
            assert (state.reachable, state.failures, state.error) == (
                False,
                FAILURES_TO_DOWN,
                "refused",
            )
            assert _gauge(metrics) == 0
            clock.now += 4.5
            [view] = watch.views()
            assert view == {
                "name": "default",
                "origin": f"http://127.0.0.1:{port}",
                "reachable": False,
                "last_checked_s": 4.5,
                "consecutive_failures": FAILURES_TO_DOWN,
                "last_error": "refused",
            }
            holder.listen()
            await watch.check()
            assert (state.reachable, state.failures) == (True, 0)
            assert _gauge(metrics) == 1
        finally:
            holder.close()
    finally:
        await proxy.close()


async def test_one_success_between_failures_starts_the_count_again(
    base_settings: Settings,
) -> None:
    """Failures that are not in a row never make an upstream unreachable."""
    with port_that_refuses() as holder:
        port = holder.getsockname()[1]
        proxy, watch, _ = await _watch(
            replace(base_settings, upstream=f"http://127.0.0.1:{port}"), Clock()
        )
        [state] = watch.states
        try:
            for _ in range(FAILURES_TO_DOWN - 1):
                await watch.check()
            holder.listen()
            await watch.check()
            assert state.failures == 0
            holder.close()
            for _ in range(FAILURES_TO_DOWN - 1):
                await watch.check()
            assert (state.reachable, state.failures) == (True, FAILURES_TO_DOWN - 1)
        finally:
            await proxy.close()


@pytest.fixture
def ca() -> trustme.CA:
    """A throwaway certificate authority no system trusts."""
    return trustme.CA()


async def _tls_server(aiohttp_server: AiohttpServer, ca: trustme.CA) -> TestServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server: TestServer = await aiohttp_server(make_app(SimConfig()), ssl=context)
    return server


@pytest.mark.parametrize(
    ("trusted", "plain", "error"),
    [(True, False, ""), (False, False, "tls_verify"), (True, True, "tls_protocol")],
)
async def test_an_https_upstream_is_checked_with_the_pools_tls_settings(
    aiohttp_server: AiohttpServer,
    ca: trustme.CA,
    base_settings: Settings,
    tmp_path: Path,
    trusted: bool,
    plain: bool,
    error: str,
) -> None:
    """The check is a TLS handshake with tls.ca_bundle: trusted passes, untrusted is tls_verify,
    plain HTTP behind https:// is tls_protocol."""
    bundle = tmp_path / "ca.pem"
    (ca if trusted else trustme.CA()).cert_pem.write_to_path(str(bundle))
    server = await (aiohttp_server(web.Application()) if plain else _tls_server(aiohttp_server, ca))
    settings = replace(
        base_settings,
        upstream=f"https://127.0.0.1:{server.port}",
        tls=Tls(verify=True, ca_bundle=str(bundle)),
    )
    proxy, watch, _ = await _watch(settings, Clock())
    try:
        await watch.check()
    finally:
        await proxy.close()
    assert watch.states[0].error == error
    assert watch.states[0].failures == (1 if error else 0)


async def test_readyz_reports_every_upstream_and_stays_ready_while_one_is_unreachable(
    aiohttp_client: Any, simulator: TestServer, base_settings: Settings
) -> None:
    """/readyz lists each upstream's reachability from the running checks, and stays 200."""
    with port_that_refuses() as holder:
        dead = holder.getsockname()[1]
        listen = Address("127.0.0.1", 0)
        upstreams = (
            Upstream("sim", f"http://127.0.0.1:{simulator.port}", listen, "all"),
            Upstream("gone", f"http://127.0.0.1:{dead}", listen, "all"),
        )
        settings = replace(
            base_settings, upstreams=upstreams, timeouts=Timeouts(connect=1.0, read=2.0)
        )
        _, admin = wiring.build(settings, check_interval=0.02)
        client = await aiohttp_client(admin)

        async def upstreams_now() -> dict[str, dict[str, Any]]:
            response = await client.get("/readyz")
            assert response.status == 200
            body = await response.json()
            assert body["status"] == "ready"
            return {view["name"]: view for view in body["upstreams"]}

        views: dict[str, dict[str, Any]] = {}

        async def gone(reachable: bool) -> bool:
            views.update(await upstreams_now())
            return bool(views["gone"]["reachable"]) is reachable

        assert await _within(5.0, lambda: gone(False))
        assert views["gone"]["last_error"] == "refused"
        assert views["gone"]["consecutive_failures"] >= FAILURES_TO_DOWN
        assert views["sim"]["reachable"] is True
        assert views["sim"]["consecutive_failures"] == 0
        metrics = await (await client.get("/metrics")).text()
        assert 'defender_proxy_upstream_reachable{upstream="gone"} 0.0' in metrics
        assert 'defender_proxy_upstream_reachable{upstream="sim"} 1.0' in metrics
        holder.listen()
        assert await _within(5.0, lambda: gone(True))
        admin[wiring.STATE].draining = True
        draining = await client.get("/readyz")
        assert draining.status == 503
        assert [view["name"] for view in (await draining.json())["upstreams"]] == ["sim", "gone"]
        await client.close()


async def _within(seconds: float, check: Callable[[], Awaitable[bool]]) -> bool:
    """Poll ``check`` every 20 ms for at most ``seconds``; whether it came true."""
    for _ in range(int(seconds / 0.02)):
        if await check():
            return True
        await asyncio.sleep(0.02)
    return await check()
