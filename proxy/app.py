"""Wiring: the proxy handler, the admin application and the state they share.

The proxy port is served by aiohttp's low-level server (no router, no middleware: one handler for
every method and target, absolute-form and ``*`` included, which the guard then refuses). The admin
port is an ordinary ``web.Application`` (``/metrics``, ``/healthz``, ``/readyz``) whose
``cleanup_ctx`` owns the process's resources, so they live exactly as long as the admin app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from proxy.callers import CallerServer, caller_connection_cap
from proxy.catalogue import CATALOGUES, catalogue_for_origin
from proxy.config import Settings, effective_routes, route_policies
from proxy.errors import SERVER_NAME
from proxy.handler import Proxy
from proxy.metrics import Metrics
from proxy.quota import make_store
from proxy.quota.limiter import Limiter
from proxy.routing import Router


class Lifecycle:
    """Whether the process takes new work; flipped once, on SIGTERM or SIGINT."""

    __slots__ = ("draining",)

    def __init__(self) -> None:
        self.draining = False


PROXY: web.AppKey[Proxy] = web.AppKey("proxy", Proxy)
STATE: web.AppKey[Lifecycle] = web.AppKey("state", Lifecycle)


def build(settings: Settings, metrics: Metrics | None = None) -> tuple[Proxy, web.Application]:
    """The proxy handler and the admin app that owns its resources."""
    metrics = metrics or Metrics()
    # One upstream: its catalogue follows from its host (Defender, Graph, or both for others).
    catalogue = CATALOGUES[catalogue_for_origin(settings.upstream)]
    router = Router(effective_routes(settings.throttle, catalogue))
    limiter = Limiter(
        settings.throttle,
        router.routes,
        route_policies(settings.throttle, catalogue),
        make_store(settings.throttle, metrics),
        metrics,
    )
    proxy = Proxy(settings, metrics, router, limiter)
    admin = web.Application()
    admin[PROXY] = proxy
    admin[STATE] = Lifecycle()
    admin.router.add_get("/metrics", _metrics)
    admin.router.add_get("/healthz", _healthz)
    admin.router.add_get("/readyz", _readyz)
    admin.cleanup_ctx.append(_resources)
    admin.on_response_prepare.append(_server_header)
    return proxy, admin


def proxy_server(proxy: Proxy) -> CallerServer:
    """The low-level server for the proxy port."""
    settings = proxy.settings
    limits = settings.limits
    return CallerServer(
        proxy.handle,
        caller_timeout=settings.timeouts.caller,
        cap=caller_connection_cap(settings),
        metrics=proxy.metrics,
        # A caller that goes away cancels its handler: a waiter gives its slot back and is never
        # forwarded, an upload stops being streamed upstream.
        handler_cancellation=True,
        access_log=None,
        keepalive_timeout=settings.timeouts.caller_keepalive,
        max_field_size=limits.max_header_size,
        max_line_size=limits.max_header_size,
    )


async def _server_header(_: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER_NAME


async def _resources(app: web.Application) -> AsyncIterator[None]:
    proxy = app[PROXY]
    await proxy.start()
    if proxy.limiter is not None:
        await proxy.limiter.warm()
    proxy.metrics.ready.set(1)
    yield
    proxy.metrics.ready.set(0)
    await proxy.close()


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[PROXY].metrics.exposition()
    return web.Response(
        body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def _readyz(request: web.Request) -> web.Response:
    if request.app[STATE].draining or request.app[PROXY].pool is None:
        return web.json_response({"status": "draining"}, status=503)
    return web.json_response({"status": "ready"})
