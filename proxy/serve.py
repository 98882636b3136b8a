"""Running the proxy as a process: a listener per upstream and the admin port, signals, and a
graceful drain.

On SIGTERM or SIGINT ``/readyz`` turns 503 at once, every proxy port stops accepting connections,
requests in flight on all of them get up to ``shutdown_grace`` (together, not one after another)
to finish, the spans still queued get up to ``tracing.FLUSH_SECONDS`` to be exported (while
tracing is on), and the process exits 0.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from collections.abc import Callable

from aiohttp import web

from proxy import app as wiring
from proxy import logs, tracing
from proxy.config import Settings, redact_url


async def serve(settings: Settings, on_ready: Callable[[int, int], None] | None = None) -> int:
    """Serve until a signal arrives, then drain; returns the exit code.

    ``on_ready`` gets the first proxy port and the admin port once every listener is bound.
    """
    log = logs.get_logger("lifecycle")
    traces, spans = tracing.start()
    proxies, admin = wiring.build(settings, tracing=spans)
    admin_runner = web.AppRunner(admin, access_log=None)
    proxy_runners = [
        web.ServerRunner(wiring.proxy_server(proxy), shutdown_timeout=settings.shutdown_grace)
        for proxy in proxies
    ]
    await admin_runner.setup()
    for runner in proxy_runners:
        await runner.setup()
    try:
        for proxy, runner in zip(proxies, proxy_runners, strict=True):
            listen = proxy.upstream.listen
            # A deep accept queue: a gateway may see thousands of tools connect at once.
            await web.TCPSite(runner, listen.host, listen.port, backlog=4096).start()
        admin_site = web.TCPSite(
            admin_runner, settings.admin_listen.host, settings.admin_listen.port
        )
        await admin_site.start()
    except OSError as exc:
        log.error("cannot listen", error=str(exc))
        await _cleanup(proxy_runners)
        await admin_runner.cleanup()
        if spans is not None:
            await tracing.stop(spans)
        return 1
    bound = [_port(runner) for runner in proxy_runners]
    admin_port = _port(admin_runner)
    listeners = [
        {
            "name": proxy.upstream.name,
            "listen": f"{proxy.upstream.listen.host}:{port}",
            "origin": proxy.upstream.origin,
            "catalogue": proxy.upstream.catalogue,
        }
        for proxy, port in zip(proxies, bound, strict=True)
    ]
    log.info(
        "listening",
        # The first listener's address and origin, as one-origin deployments always had them.
        proxy=listeners[0]["listen"],
        admin=f"{settings.admin_listen.host}:{admin_port}",
        upstream=listeners[0]["origin"],
        listeners=listeners,
        tls_verify=settings.tls.verify,
        quota_store=redact_url(settings.throttle.store),
        tracing=traces.describe(),
    )
    for upstream in settings.listeners:
        if upstream.listen.host not in _LOOPBACK and not settings.allow_from:
            log.warning(
                "the proxy port is open beyond loopback and allow_from is empty: "
                "any caller that can reach it may use the tenant's quota",
                listen=str(upstream.listen),
                upstream=upstream.name,
            )
    if not settings.tls.verify:
        log.warning("TLS verification of the upstream is OFF: tls.verify is false")
    # What start-up made (modules, settings, routes, metrics) lives as long as the process: out of
    # the collector's generations, no full collection under load has to walk it again.
    gc.collect()
    gc.freeze()
    if on_ready is not None:
        on_ready(bound[0], admin_port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    admin[wiring.STATE].draining = True
    admin[wiring.METRICS].ready.set(0)
    in_flight = sum(proxy.in_flight for proxy in proxies)
    log.info("draining", in_flight=in_flight, grace_s=settings.shutdown_grace)
    await _cleanup(proxy_runners)
    await admin_runner.cleanup()
    if spans is not None:
        # After the drain: the spans of the last requests are among those exported.
        await tracing.stop(spans)
    log.info("stopped")
    return 0


_LOOPBACK = ("127.0.0.1", "::1", "localhost")


async def _cleanup(runners: list[web.ServerRunner]) -> None:
    """Stop every proxy port at once: each stops accepting, then waits for its handlers up to
    the grace, so the grace is the longest drain, not the sum of them."""
    results = await asyncio.gather(*(r.cleanup() for r in runners), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def _port(runner: web.BaseRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    return 0


def run(settings: Settings) -> int:
    """Run the proxy on uvloop where it is available."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if sys.platform != "win32":
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we ship
            pass
        else:
            loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(serve(settings))
