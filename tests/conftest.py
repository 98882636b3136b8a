"""Fixtures shared by every test: the simulator as upstream, the proxy in front of it, captured logs,
a private redis-server."""

from __future__ import annotations

import io
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
import uvloop
from aiohttp import web
from aiohttp.test_utils import RawTestServer, TestClient, TestServer

from proxy import app as wiring
from proxy import logs
from proxy.config import Settings, Timeouts, effective_routes, route_policies
from proxy.handler import Proxy
from proxy.metrics import Metrics
from proxy.quota.limiter import Limiter
from proxy.quota.memory import MemoryStore
from proxy.routing import Router
from proxy.simulator import SimConfig, make_app
from tests.support.redis import RedisServer

if TYPE_CHECKING:
    from proxy.spans import Spans
    from tests.otlp_collector import Collector


@pytest.fixture(autouse=True)
def _no_azure_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test picks up credentials from the ``AZURE_*`` variables of the machine it runs on."""
    for name in [name for name in os.environ if name.startswith("AZURE_")]:
        monkeypatch.delenv(name)


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Any]:
    """Every test runs on uvloop, the loop the proxy runs on in production."""
    return {"uvloop": uvloop.new_event_loop}


class LogCapture:
    """The JSON lines the proxy wrote during a test."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def lines(self, event: str | None = None) -> list[dict[str, Any]]:
        parsed = [orjson.loads(line) for line in self.text.splitlines() if line.strip()]
        return [p for p in parsed if event is None or p.get("event") == event]


@pytest.fixture
def captured_logs() -> LogCapture:
    """Route every structlog line of the test into memory, as JSON."""
    capture = LogCapture()
    logs.configure("json", "debug", capture.stream)
    return capture


@dataclass
class Stack:
    """The proxy in front of the simulator, with a client pointed at the proxy."""

    proxy: Proxy
    client: TestClient[Any, Any]
    upstream: TestServer
    logs: LogCapture

    @property
    def metrics(self) -> Metrics:
        return self.proxy.metrics

    @property
    def port(self) -> int:
        """The proxy's port on 127.0.0.1."""
        port = self.client.port
        assert port is not None  # the client's server is started before a test sees the stack
        return port

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


@pytest.fixture
async def simulator(aiohttp_server: Callable[..., Any]) -> TestServer:
    """The stand-in Defender API on a free loopback port."""
    server: TestServer = await aiohttp_server(make_app(SimConfig()))
    return server


@pytest.fixture
def base_settings(simulator: TestServer) -> Settings:
    """Settings pointing at the simulator, with short timeouts."""
    return Settings(
        upstream=f"http://127.0.0.1:{simulator.port}",
        timeouts=Timeouts(connect=1.0, read=2.0),
    )


@pytest.fixture
async def make_stack(
    aiohttp_raw_server: Callable[..., Any],
    aiohttp_client: Callable[..., Any],
    simulator: TestServer,
    base_settings: Settings,
    captured_logs: LogCapture,
) -> AsyncIterator[Callable[..., Any]]:
    """Build a proxy stack, optionally with settings changed from the test defaults."""
    proxies: list[Proxy] = []

    async def build(quota: bool = False, tracing: Spans | None = None, **changes: Any) -> Stack:
        settings = replace(base_settings, **changes)
        metrics = Metrics()
        router = Router(effective_routes(settings.throttle))
        limiter = None
        if quota:
            limiter = Limiter(
                settings.throttle,
                router.routes,
                route_policies(settings.throttle),
                MemoryStore(),
                metrics,
            )
        proxy = Proxy(settings, metrics, router, limiter, tracing=tracing)
        await proxy.start()
        proxies.append(proxy)
        server: RawTestServer = await aiohttp_raw_server(proxy.handle)
        client = await aiohttp_client(server, auto_decompress=False)
        return Stack(proxy, client, simulator, captured_logs)

    yield build
    for proxy in proxies:
        await proxy.close()


Serve = Callable[..., Awaitable[tuple[Stack, int]]]


@pytest.fixture
async def serve(make_stack: Callable[..., Any]) -> AsyncIterator[Serve]:
    """Start a proxy stack on the production server class (not aiohttp's test server), on a free
    port, with settings changed from the test defaults: (stack, port)."""
    runners: list[web.ServerRunner] = []

    async def start(**changes: Any) -> tuple[Stack, int]:
        stack: Stack = await make_stack(**changes)
        runner = web.ServerRunner(wiring.proxy_server(stack.proxy))
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return stack, int(runner.addresses[0][1])

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def served(serve: Serve) -> tuple[Stack, int]:
    """The proxy with the test defaults on the production server class, on a free port."""
    return await serve()


@pytest.fixture
async def stack(make_stack: Callable[..., Any]) -> Stack:
    """A proxy stack with the test defaults."""
    built: Stack = await make_stack()
    return built


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A private redis-server on a free port; resumed (if a test paused it) and stopped at teardown."""
    server = RedisServer(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        if server.running:
            assert server.proc is not None
            server.proc.send_signal(signal.SIGCONT)
        await server.stop()


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    """A stand-in OTLP/HTTP collector on a free loopback port."""
    from tests.otlp_collector import Collector  # OpenTelemetry's protobufs: only where used

    started = Collector()
    await started.start()
    yield started
    await started.stop()
