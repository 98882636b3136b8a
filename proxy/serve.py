"""Running the proxy as a process: a listener per upstream and the admin port, signals, a
reload, and a graceful drain.

On SIGHUP the config file is read again and what can change live is applied (``proxy.reload``).
On SIGTERM or SIGINT ``/readyz`` turns 503 at once, every proxy port stops accepting connections,
requests in flight on all of them get up to ``shutdown_grace`` (together, not one after another)
to finish, and the process exits 0.

A listener with ``listen_tls`` serves HTTPS: its socket gets the context of a ``ServerTls``
(``proxy.listen_tls``), which watches the files and serves a rotated pair to new handshakes. The
``ServerTls`` of each such listener, by upstream name, is what a configuration reload would hand
new files (``ServerTls.use``).
The spans still queued get up to ``tracing.FLUSH_SECONDS`` to be exported after the drain
(while tracing is on).
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
import time
from collections.abc import Callable

from aiohttp import web

from proxy import allocator, logs, tracing
from proxy import app as wiring
from proxy.config import Credentials, Settings, redact_url
from proxy.listen_tls import PairError, ServerTls
from proxy.reload import Reloader


async def serve(
    settings: Settings,
    on_ready: Callable[[int, int], None] | None = None,
    path: str | None = None,
) -> int:
    """Serve until a signal arrives, then drain; returns the exit code.

    ``on_ready`` gets the first proxy port and the admin port once every listener is bound.
    ``path`` is the config file ``settings`` came from, read again on SIGHUP (None: the one
    ``DEFENDER_PROXY_CONFIG`` names, if any).
    """
    log = logs.get_logger("lifecycle")
    traces, spans = tracing.start(ca_bundle=settings.tls.ca_bundle)
    proxies, admin = wiring.build(settings, tracing=spans)
    admin[wiring.METRICS].config_loaded.set(time.time())
    try:
        tls = {
            proxy.upstream.name: ServerTls(proxy.upstream.name, files, proxy.metrics)
            for proxy in proxies
            if (files := proxy.upstream.listen_tls) is not None
        }
    except PairError as exc:
        # The files were checked with the config; they changed before they could be served.
        log.error("cannot serve listen_tls", problems=str(exc))
        if spans is not None:
            await tracing.stop(spans)
        return 1
    servers = [wiring.proxy_server(proxy) for proxy in proxies]
    reloader = Reloader(
        path,
        settings,
        list(zip(proxies, servers, strict=True)),
        admin[wiring.LIMITER],
        admin[wiring.ERRORS],
        admin[wiring.METRICS],
        tls=tls,
    )
    # From here a SIGHUP reloads (a reload before the ports are bound changes what they serve).
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, reloader.request)
    admin_runner = web.AppRunner(admin, access_log=None)
    proxy_runners = [
        web.ServerRunner(server, shutdown_timeout=settings.shutdown_grace) for server in servers
    ]
    await admin_runner.setup()
    for runner in proxy_runners:
        await runner.setup()
    try:
        for proxy, runner in zip(proxies, proxy_runners, strict=True):
            listen = proxy.upstream.listen
            served = tls.get(proxy.upstream.name)
            context = None if served is None else served.context
            # A deep accept queue: a gateway may see thousands of tools connect at once.
            site = web.TCPSite(runner, listen.host, listen.port, backlog=4096, ssl_context=context)
            await site.start()
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
            "scheme": proxy.upstream.scheme,
            # Whether tokenless callers get a minted token: "proxy (secret, app …)" or "none";
            # a pod the workload identity webhook missed shows "none" here.
            "credential": _credential(proxy.upstream.credentials),
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
        allocator=allocator.running(),
    )
    wiring.warn_if_open(settings)
    if not settings.tls.verify:
        log.warning("TLS verification of the upstream is OFF: tls.verify is false")
    for served in tls.values():
        served.start()
    # What start-up made (modules, settings, routes, metrics) lives as long as the process: out of
    # the collector's generations, no full collection under load has to walk it again.
    gc.collect()
    gc.freeze()
    if on_ready is not None:
        on_ready(bound[0], admin_port)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    loop.remove_signal_handler(signal.SIGHUP)
    await reloader.wait()

    admin[wiring.STATE].draining = True
    admin[wiring.METRICS].ready.set(0)
    in_flight = sum(proxy.in_flight for proxy in proxies)
    log.info("draining", in_flight=in_flight, grace_s=settings.shutdown_grace)
    for served in tls.values():
        await served.close()
    await _cleanup(proxy_runners)
    await admin_runner.cleanup()
    if spans is not None:
        # After the drain: the spans of the last requests are among those exported.
        await tracing.stop(spans)
    log.info("stopped")
    return 0


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


def run(settings: Settings, path: str | None = None) -> int:
    """Run the proxy on uvloop where it is available; ``path`` as for ``serve``."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if sys.platform != "win32":
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we ship
            pass
        else:
            loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(serve(settings, path=path))


def _credential(credentials: Credentials | None) -> str:
    """What a listener's line says of the credential it holds (never the secret or its file)."""
    if credentials is None:
        return "none"
    return f"{credentials.kind} of app {credentials.client_id} for {credentials.scope}"
