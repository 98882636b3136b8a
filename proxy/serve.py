"""Running the proxy as a process: two listeners, signals, and a graceful drain.

On SIGTERM or SIGINT ``/readyz`` turns 503 at once, the proxy port stops accepting connections,
requests in flight get up to ``shutdown_grace`` to finish, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from collections.abc import Callable

from aiohttp import web

from proxy import app as wiring
from proxy import logs
from proxy.config import Settings, redact_url


async def serve(settings: Settings, on_ready: Callable[[int, int], None] | None = None) -> int:
    """Serve until a signal arrives, then drain; returns the exit code."""
    log = logs.get_logger("lifecycle")
    proxy, admin = wiring.build(settings)
    admin_runner = web.AppRunner(admin, access_log=None)
    proxy_runner = web.ServerRunner(
        wiring.proxy_server(proxy), shutdown_timeout=settings.shutdown_grace
    )
    await admin_runner.setup()
    await proxy_runner.setup()
    try:
        # A deep accept queue: a gateway may see thousands of tools connect at once.
        proxy_site = web.TCPSite(
            proxy_runner, settings.listen.host, settings.listen.port, backlog=4096
        )
        admin_site = web.TCPSite(
            admin_runner, settings.admin_listen.host, settings.admin_listen.port
        )
        await proxy_site.start()
        await admin_site.start()
    except OSError as exc:
        log.error("cannot listen", error=str(exc))
        await proxy_runner.cleanup()
        await admin_runner.cleanup()
        return 1
    ports = (_port(proxy_runner), _port(admin_runner))
    log.info(
        "listening",
        proxy=f"{settings.listen.host}:{ports[0]}",
        admin=f"{settings.admin_listen.host}:{ports[1]}",
        upstream=settings.upstream,
        tls_verify=settings.tls.verify,
        quota_store=redact_url(settings.throttle.store),
    )
    if settings.listen.host not in ("127.0.0.1", "::1", "localhost") and not settings.allow_from:
        log.warning(
            "the proxy port is open beyond loopback and allow_from is empty: "
            "any caller that can reach it may use the tenant's quota",
            listen=str(settings.listen),
        )
    if not settings.tls.verify:
        log.warning("TLS verification of the upstream is OFF: tls.verify is false")
    # What start-up made (modules, settings, routes, metrics) lives as long as the process: out of
    # the collector's generations, no full collection under load has to walk it again.
    gc.collect()
    gc.freeze()
    if on_ready is not None:
        on_ready(*ports)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    admin[wiring.STATE].draining = True
    proxy.metrics.ready.set(0)
    log.info("draining", in_flight=proxy.in_flight, grace_s=settings.shutdown_grace)
    await proxy_runner.cleanup()  # stops accepting, then waits for handlers up to the grace
    await admin_runner.cleanup()
    log.info("stopped")
    return 0


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
