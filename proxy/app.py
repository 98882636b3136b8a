"""Wiring: the proxy handler, the admin application and the state they share.

The proxy port is served by aiohttp's low-level server (no router, no middleware: one handler for
every method and target, absolute-form and ``*`` included, which the guard then refuses). The admin
port is an ordinary ``web.Application`` (``/metrics``, ``/healthz``, ``/readyz``) whose
``cleanup_ctx`` owns the process's resources, so they live exactly as long as the admin app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from proxy.config import Settings, effective_routes, route_policies
from proxy.errors import error_response, new_target
from proxy.handler import Proxy
from proxy.logs import get_logger
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
    router = Router(effective_routes(settings.throttle))
    limiter = Limiter(
        settings.throttle,
        router.routes,
        route_policies(settings.throttle),
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
    return proxy, admin


class _RequestHandler(web.RequestHandler):
    """Requests aiohttp cannot parse: a 400 in the Defender envelope and one scrubbed log line.

    aiohttp's own answer echoes the offending bytes (a header line with a token in it, say) in its
    body and logs them with a traceback; neither may happen here.
    """

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had begun; the connection is closed instead")
        target = new_target()
        code = "BadRequest" if status < 500 else "InternalServerError"
        text = "the request is not valid HTTP/1.1" if status < 500 else "the proxy failed"
        get_logger("http").warning(
            "request refused by the HTTP parser",
            status=status,
            error=type(exc).__name__ if exc is not None else "",
            target=target,
        )
        response = error_response(status, code, text, target)
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> web.RequestHandler:
        return _RequestHandler(self, loop=self._loop, **self._kwargs)


def proxy_server(proxy: Proxy) -> web.Server:
    """The low-level server for the proxy port."""
    limits = proxy.settings.limits
    return _Server(
        proxy.handle,
        # A caller that goes away cancels its handler: a waiter gives its slot back and is never
        # forwarded, an upload stops being streamed upstream.
        handler_cancellation=True,
        access_log=None,
        max_field_size=limits.max_header_size,
        max_line_size=limits.max_header_size,
    )


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
