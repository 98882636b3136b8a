"""Wiring: the proxy handlers (one per upstream), the admin application and the state they share.

Each proxy port is served by aiohttp's low-level server (no router, no middleware: one handler for
every method and target, absolute-form and ``*`` included, which the guard then refuses). Each
upstream gets its own handler, connection pool and router; all of them share one limiter (one
quota store) and one set of metrics, so a route has one quota whichever listener it came in on.
The admin port is an ordinary ``web.Application`` (``/metrics``, ``/healthz``, ``/readyz``,
``/errors``) whose ``cleanup_ctx`` owns the process's resources, so they live exactly as long as
the admin app: the pools, the quota store, the task that checks every upstream's reachability
(``proxy.reachability``) and the one that gives memory back once load subsides (``proxy.trim``). Every listener keeps its error answers in the one ring of recent errors.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from proxy import forward
from proxy.callers import CallerServer, caller_connection_cap
from proxy.catalogue import CATALOGUES, RouteSpec
from proxy.config import Settings, effective_routes, route_policies
from proxy.errors import SERVER_NAME
from proxy.handler import Proxy
from proxy.logs import get_logger
from proxy.metrics import Metrics
from proxy.quota import make_store
from proxy.quota.limiter import Limiter
from proxy.reachability import CHECK_INTERVAL, Watch
from proxy.recent_errors import RecentErrors, answer
from proxy.routing import Router
from proxy.trim import INTERVAL, Trimmer

if TYPE_CHECKING:
    from proxy.spans import Spans
    from proxy.tokens import TokenSource


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
WATCH: web.AppKey[Watch] = web.AppKey("watch", Watch)
TRIMMER: web.AppKey[Trimmer] = web.AppKey("trimmer", Trimmer)


def build(
    settings: Settings,
    metrics: Metrics | None = None,
    check_interval: float = CHECK_INTERVAL,
    tracing: Spans | None = None,
    trim_interval: float = INTERVAL,
) -> tuple[tuple[Proxy, ...], web.Application]:
    """The proxy handlers, one per upstream in ``settings.listeners`` order, and the admin app
    that owns their resources; each upstream's reachability is checked every
    ``check_interval`` seconds, the process looks for memory to give back every
    ``trim_interval`` seconds, and requests are traced with ``tracing`` when given."""
    metrics = metrics or Metrics()
    throttle = settings.throttle
    routers = routers_for(settings)
    routes, policies = quota_routes(settings, routers)
    store = make_store(throttle, metrics, settings.tls.ca_bundle)
    limiter = Limiter(throttle, routes, policies, store, metrics)
    errors = RecentErrors(settings.limits.recent_errors)
    tokens = _token_sources(settings, metrics)
    proxies = tuple(
        Proxy(
            settings,
            metrics,
            routers[upstream.catalogue],
            limiter,
            upstream,
            # Paging links name the scheme the caller came in with.
            scheme=upstream.scheme,
            errors=errors,
            tracing=tracing,
            tokens=tokens.get(upstream.name),
        )
        for upstream in settings.listeners
    )
    admin = web.Application()
    admin[PROXIES] = proxies
    admin[LIMITER] = limiter
    admin[METRICS] = metrics
    admin[STATE] = Lifecycle()
    admin[ERRORS] = errors
    admin[WATCH] = Watch(
        [(proxy.upstream.name, proxy.upstream.origin, proxy.probe) for proxy in proxies],
        metrics.upstream_reachable,
        check_interval,
    )
    admin[TRIMMER] = Trimmer(
        lambda: _doing(proxies, metrics),
        lambda: any(proxy.in_flight for proxy in proxies),
        trim_interval,
        tidy=limiter.tidy,
    )
    admin.router.add_get("/metrics", _metrics)
    admin.router.add_get("/healthz", _healthz)
    admin.router.add_get("/readyz", _readyz)
    admin.router.add_get("/errors", _errors)
    admin.cleanup_ctx.append(_resources)
    admin.on_response_prepare.append(_server_header)
    return proxies, admin


def _doing(proxies: tuple[Proxy, ...], metrics: Metrics) -> tuple[float, float, int]:
    """What the process is doing, as ``Trimmer`` compares it from look to look: the requests
    answered so far, the callers' connections open, the upstream connections open."""
    answered = sum(child.value for _, child in metrics.requests.items())
    upstream = sum(proxy.pool.open_connections for proxy in proxies if proxy.pool is not None)
    return answered, metrics.caller_connection_sources.total(), upstream


def _token_sources(settings: Settings, metrics: Metrics) -> dict[str, TokenSource]:
    """The token sources of the listeners that hold a credential, by listener name."""
    if not any(upstream.credentials is not None for upstream in settings.listeners):
        return {}
    # Imported only here: a proxy that holds no credential never loads the token machinery.
    from proxy.tokens import sources_for

    return sources_for(settings, metrics)


def token_sources(proxies: tuple[Proxy, ...]) -> list[TokenSource]:
    """Each distinct token source of ``proxies`` once."""
    return list({id(p.tokens): p.tokens for p in proxies if p.tokens is not None}.values())


def routers_for(settings: Settings) -> dict[str, Router]:
    """A router per catalogue the listeners serve, by catalogue name."""
    # Routers hold no state: upstreams with one catalogue share its router.
    return {
        name: Router(effective_routes(settings.throttle, CATALOGUES[name]))
        for name in dict.fromkeys(upstream.catalogue for upstream in settings.listeners)
    }


def quota_routes(
    settings: Settings, routers: dict[str, Router]
) -> tuple[tuple[RouteSpec, ...], dict[str, tuple[str, str]]]:
    """Every route the ``routers`` know, once by name, and each one's (priority, mode): what
    the process's one limiter admits on."""
    # A name means one route in every catalogue (`other` included), so the quota of a route is
    # one whichever listener a request came in on.
    routes: dict[str, RouteSpec] = {}
    policies: dict[str, tuple[str, str]] = {}
    for name, router in routers.items():
        for spec in router.routes:
            routes.setdefault(spec.name, spec)
        policies.update(route_policies(settings.throttle, CATALOGUES[name]))
    return tuple(routes.values()), policies


def warn_if_open(settings: Settings) -> None:
    """Warn of each listener that any caller who can reach it may use: one beyond loopback while
    ``allow_from`` is empty (at start, and on a reload that empties ``allow_from``)."""
    if settings.allow_from:
        return
    for upstream in settings.listeners:
        if upstream.listen.host not in _LOOPBACK:
            get_logger("lifecycle").warning(
                "the proxy port is open beyond loopback and allow_from is empty: "
                "any caller that can reach it may use the tenant's quota",
                listen=str(upstream.listen),
                upstream=upstream.name,
            )


_LOOPBACK = ("127.0.0.1", "::1", "localhost")


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
    # One TLS context for every listener: the tls section is the process's, and a context that
    # loads a CA bundle whole holds every certificate in it (0.8 MiB for the system's).
    tls = None
    if any(proxy.upstream.origin.startswith("https:") for proxy in proxies):
        tls = forward.tls_context(proxies[0].settings)
    for proxy in proxies:
        await proxy.start(tls)
    for source in token_sources(proxies):
        await source.start()
    await limiter.warm()
    checks = asyncio.create_task(app[WATCH].run())
    trims = asyncio.create_task(app[TRIMMER].run())
    metrics.ready.set(1)
    yield
    metrics.ready.set(0)
    for task in (checks, trims):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for source in token_sources(proxies):
        await source.close()
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
    # Whether the upstreams can be reached is reported, not a condition (proxy.reachability).
    proxies = request.app[PROXIES]
    upstreams = request.app[WATCH].views()
    if request.app[STATE].draining or any(proxy.pool is None for proxy in proxies):
        return web.json_response({"status": "draining", "upstreams": upstreams}, status=503)
    return web.json_response({"status": "ready", "upstreams": upstreams})


async def _errors(request: web.Request) -> web.Response:
    return answer(request.app[ERRORS], request.query)
