"""The proxy holding an app's credential on a real loopback port, for attacks on that credential.

What the hostile-caller and hostile-identity-provider tests share: the stand-in identity provider
(``tests.idpkit``), an upstream that records every request as h11 parses it
(``tests.rawupstream``) or one of the test's own, and the proxy between them with its token
source on a clock the test can move (a failed mint's back-off is then passed without sleeping).
Every account of a request is at hand: what the caller got, what the upstream parsed, what the
proxy logged, counted and kept in its recent errors.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import MultiDict

from proxy import app as wiring
from proxy.config import parse_settings
from proxy.handler import Proxy
from proxy.metrics import Metrics
from proxy.recent_errors import RecentErrors, answer
from proxy.routing import Router
from proxy.simulator.directory import App, Secret
from proxy.tokens import TokenSource
from tests.conftest import LogCapture
from tests.httpraw import RawResponse, read_response
from tests.idpkit import APP, ROLES, SECRET, TENANT, Files, Idp, held_config, running_idp
from tests.rawupstream import RawUpstream, UpstreamRequest

if TYPE_CHECKING:
    from proxy.spans import Spans

#: A tokenless request that ends its connection: the one most tests send.
TOKENLESS = b"GET /api/machines HTTP/1.1\r\nHost: proxy.test\r\nConnection: close\r\n\r\n"


@dataclass
class Front:
    """The proxy holding the credential, what is around it, and every account of its requests."""

    proxy: Proxy
    source: TokenSource
    port: int
    idp: Idp
    metrics: Metrics
    errors: RecentErrors
    logs: LogCapture
    secret_file: Path
    #: the recording upstream (None: the test brought its own)
    upstream: RawUpstream | None = None
    _shift: list[float] = field(default_factory=lambda: [0.0])

    def later(self, seconds: float) -> None:
        """Move the token source's clock ``seconds`` on (a back-off passes at once)."""
        self._shift[0] += seconds

    @property
    def received(self) -> list[UpstreamRequest]:
        """Every request the recording upstream parsed, in order."""
        assert self.upstream is not None
        return self.upstream.recording.requests

    async def converse(self, raw: bytes, answers: int, seconds: float = 10.0) -> list[RawResponse]:
        """Send ``raw`` on one connection and read ``answers`` responses from it."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(raw)
            await writer.drain()
            async with asyncio.timeout(seconds):
                return [await read_response(reader) for _ in range(answers)]
        finally:
            writer.close()

    async def call(self, raw: bytes = TOKENLESS) -> RawResponse:
        """One request on a connection of its own; its answer."""
        (response,) = await self.converse(raw, 1)
        return response

    async def token_requests(self) -> list[dict[str, Any]]:
        """The token requests the identity provider received, oldest first."""
        stats = await self.idp.control("GET", "/_sim/identity")
        requests: list[dict[str, Any]] = stats["requests"]
        return requests

    async def asked(self) -> int:
        """How many token requests reached the provider, those it has not answered yet too."""
        stats = await self.idp.control("GET", "/_sim/identity")
        count: int = stats["token_requests"]
        return count

    async def token(self) -> str:
        """The token the proxy holds now (minting it if need be), without its scheme."""
        return (await self.source.token()).authorization.removeprefix("Bearer ")

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def written(self) -> str:
        """Everything the proxy wrote for an operator: its log, its metrics, its ``/errors``."""
        view = answer(self.errors, MultiDict()).body
        assert isinstance(view, bytes)
        return self.logs.text + self.metrics.exposition().decode() + view.decode()


@asynccontextmanager
async def holding(
    files: Files,
    root: Path,
    logs: LogCapture,
    *,
    upstream: str | None = None,
    start: bool = False,
    tracing: Spans | None = None,
    interval: float = 0.05,
    **top: Any,
) -> AsyncIterator[Front]:
    """The proxy holding a secret (``root/client-secret``) of an app the provider knows, in front
    of a recording upstream (or the origin ``upstream``); ``start`` starts the token source's
    background work (the first mint, the file watch) as ``run`` does."""
    async with AsyncExitStack() as stack:
        app = App(TENANT, APP, ROLES, (Secret(SECRET),))
        idp = await stack.enter_async_context(running_idp(files, (app,)))
        recording = None
        if upstream is None:
            recording = RawUpstream()
            await recording.start()
            stack.push_async_callback(recording.close)
            upstream = f"http://127.0.0.1:{recording.port}"
        secret = root / "client-secret"
        secret.write_text(SECRET + "\n", encoding="utf-8")
        config = held_config(upstream, idp, {"client_secret_file": str(secret)}, **top)
        settings = parse_settings(config, "test.yaml", environ={})
        credentials = settings.listeners[0].credentials
        assert credentials is not None
        metrics = Metrics()
        shift = [0.0]
        source = TokenSource(
            credentials,
            ["default"],
            metrics,
            str(files.ca_bundle),
            connect_timeout=1.0,
            timeout=5.0,
            clock=lambda: time.time() + shift[0],
            interval=interval,
        )
        stack.push_async_callback(source.close)
        errors = RecentErrors(100)
        proxy = Proxy(
            settings, metrics, Router(), None, errors=errors, tracing=tracing, tokens=source
        )
        await proxy.start()
        stack.push_async_callback(proxy.close)
        runner = web.ServerRunner(wiring.proxy_server(proxy))
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = int(runner.addresses[0][1])
        if start:
            await source.start()
        yield Front(
            proxy, source, port, idp, metrics, errors, logs, secret, recording, _shift=shift
        )


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    """Wait until ``check()`` holds, polling; fails the test after ``seconds``."""
    async with asyncio.timeout(seconds):
        while not await check():  # noqa: ASYNC110 - another server's state, polled
            await asyncio.sleep(0.02)


def make_fifo(path: Path) -> None:
    """Put a FIFO at ``path``: opening it for reading would wait for a writer."""
    os.mkfifo(path)


def make_directory(path: Path) -> None:
    """Put a directory at ``path``."""
    path.mkdir()


def link_dev_zero(path: Path) -> None:
    """Put a symlink to /dev/zero at ``path``: reading it never ends."""
    path.symlink_to("/dev/zero")
