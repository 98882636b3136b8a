"""Wiring: the proxy handlers (one per upstream), the admin application and the state they share.

Each proxy port is served by aiohttp's low-level server (no router, no middleware: one handler for
every method and target, absolute-form and ``*`` included, which the guard then refuses). Each
upstream gets its own handler, connection pool and router; all of them share one limiter (one
quota store) and one set of metrics, so a route has one quota whichever listener it came in on.
The admin port is an ordinary ``web.Application`` (``/metrics``, ``/healthz``, ``/readyz``,
``/errors``) whose ``cleanup_ctx`` owns the process's resources, so they live exactly as long as
the admin app. Every listener keeps its error answers in the one ring of recent errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from proxy.callers import CallerServer, caller_connection_cap
from proxy.catalogue import CATALOGUES, RouteSpec
from proxy.config import Settings, effective_routes, route_policies
from proxy.errors import SERVER_NAME
from proxy.handler import Proxy
from proxy.metrics import Metrics
from proxy.quota import make_store
from proxy.quota.limiter import Limiter
from proxy.recent_errors import RecentErrors, answer
from proxy.routing import Router

if TYPE_CHECKING:
    from proxy.spans import Spans


class Lifecycle:
    """Whether the process takes new work; flipped once, on SIGTERM or SIGINT."""

    __slots__ = ("draining",)

    def __init__(self) -> None:
        self.draining = False


PROXIES: web.AppKey[tuple[Proxy, ...]] = web.AppKey("proxies", tuple)
LIMITER: web.AppKey[Limiter] = web.AppKey("limiter", Limiter)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
STATE: web.AppKey[Lifecycle] = web.AppKey("state", Lifecycle)
ERRORS: web.AppKey[RecentErrors] = web.AppKey("errors", RecentErrors)


def build(
    settings: Settings, metrics: Metrics | None = None, tracing: Spans | None = None
) -> tuple[tuple[Proxy, ...], web.Application]:
    """The proxy handlers, one per upstream in ``settings.listeners`` order, and the admin app
    that owns their resources; their requests are traced with ``tracing`` when given."""
    metrics = metrics or Metrics()
    throttle = settings.throttle
    listeners = settings.listeners
    # Routers hold no state: upstreams with one catalogue share its router.
    routers = {
        name: Router(effective_routes(throttle, CATALOGUES[name]))
        for name in dict.fromkeys(upstream.catalogue for upstream in listeners)
    }
    # One limiter knows every route served. A name means one route in every catalogue (`other`
    # included), so the quota of a route is one whichever listener a request came in on.
    routes: dict[str, RouteSpec] = {}
    policies: dict[str, tuple[str, str]] = {}
    for name, router in routers.items():
        for spec in router.routes:
            routes.setdefault(spec.name, spec)
        policies.update(route_policies(throttle, CATALOGUES[name]))
    limiter = Limiter(
        throttle,
        tuple(routes.values()),
        policies,
        make_store(throttle, metrics),
        metrics,
    )
    errors = RecentErrors(settings.limits.recent_errors)
    proxies = tuple(
        Proxy(
            settings,
            metrics,
            routers[upstream.catalogue],
            limiter,
            upstream,
            errors=errors,
            tracing=tracing,
        )
        for upstream in listeners
    )
    admin = web.Application()
    admin[PROXIES] = proxies
    admin[LIMITER] = limiter
    admin[METRICS] = metrics
    admin[STATE] = Lifecycle()
    admin[ERRORS] = errors
    admin.router.add_get("/metrics", _metrics)
    admin.router.add_get("/healthz", _healthz)
    admin.router.add_get("/readyz", _readyz)
    admin.router.add_get("/errors", _errors)
    admin.cleanup_ctx.append(_resources)
    admin.on_response_prepare.append(_server_header)
    return proxies, admin


def proxy_server(proxy: Proxy) -> CallerServer:
    """The low-level server for one proxy port."""
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
    proxies, limiter, metrics = app[PROXIES], app[LIMITER], app[METRICS]
    for proxy in proxies:
        await proxy.start()
    await limiter.warm()
    metrics.ready.set(1)
    yield
    metrics.ready.set(0)
    for proxy in proxies:
        await proxy.close_pool()
    await limiter.close()


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition()
    return web.Response(
        body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def _readyz(request: web.Request) -> web.Response:
    # Ready only while every listener has its pool: a half-started process takes no traffic.
    proxies = request.app[PROXIES]
    if request.app[STATE].draining or any(proxy.pool is None for proxy in proxies):
        return web.json_response({"status": "draining"}, status=503)
    return web.json_response({"status": "ready"})


async def _errors(request: web.Request) -> web.Response:
    return answer(request.app[ERRORS], request.query)
