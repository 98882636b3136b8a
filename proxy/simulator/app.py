"""The simulator's application: its configuration, its routes and the blocking ``serve``.

Every request outside ``/_sim/`` has its token checked first with ``check_tokens`` (``auth``),
then goes through the quota (a throttled request gets the 429, whatever it asked for; with
``per_identity``, the quota of its route and token, see ``keyed``), then, with ``check_bodies``,
through the API's check of a documented body (``body_check``), then through its ``X-Simulate``
directives. ``/_sim/stats``, ``/_sim/requests`` (the ``journal`` of the last requests, each with
its ``client-request-id``) and ``/_sim/reset`` are the control endpoints; they are exempt from the
quota and not counted.
``$batch`` (``batch``) counts each of its inner requests instead of itself. Lists page
(``paging``) and Graph hunting answers with results (``hunting``) unless a directive chose otherwise.
"""

from __future__ import annotations

import asyncio
import base64
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import orjson
from aiohttp import web

from proxy.identity import read_claims
from proxy.simulator import auth, batch, behaviour, body_check, hunting, paging
from proxy.simulator.directives import HEADER, DirectiveError, parse
from proxy.simulator.journal import Entry, Journal
from proxy.simulator.keyed import KeyedQuota
from proxy.simulator.quota import refusal_message
from proxy.units import Limit

if TYPE_CHECKING:
    from proxy.simulator.identity import IdpSite

CONTROL_PREFIX: Final = "/_sim/"
#: Seconds in-flight answers (a slow one, a long download) get to finish on shutdown.
_SHUTDOWN_GRACE: Final = 2.0


@dataclass(frozen=True, slots=True)
class SimConfig:
    """How the simulator throttles, pages and checks bodies."""

    #: Sliding-window quota applied to every request outside ``/_sim/``.
    limits: tuple[Limit, ...] = ()
    #: Graph-like: requests answered 429 also count against the window.
    count_rejected: bool = False
    #: Count like Microsoft: a quota per route and app + tenant (hunting: per tenant).
    per_identity: bool = False
    #: Injectable so tests move time instead of sleeping.
    clock: Callable[[], float] = time.monotonic
    #: The origin paging links are absolute on; None: the one each request came to (see paging).
    origin: str | None = None
    #: Items in each paged list, and a page's size when the request gives no ``$top``.
    list_size: int = 25
    page_size: int = 10
    #: Check tokens as the API does (``auth``): 401 for one it cannot accept, 403 without the
    #: endpoint's permission. Off: any token, or none, is served.
    check_tokens: bool = False
    #: Answer 400 for a body that leaves out a required parameter or has a key the endpoint does
    #: not document, as the API does (``body_check``); off, every body is taken.
    check_bodies: bool = False


QUOTA: Final = web.AppKey("quota", KeyedQuota)
CONFIG: Final = web.AppKey("config", SimConfig)
JOURNAL: Final = web.AppKey("journal", Journal)
DEFAULT_CONFIG: Final = SimConfig()


def make_app(config: SimConfig = DEFAULT_CONFIG) -> web.Application:
    """The simulator as an aiohttp application, with fresh quota state."""
    app = web.Application()
    app[QUOTA] = KeyedQuota(config.limits, config.count_rejected, config.clock, config.per_identity)
    app[CONFIG] = config
    app[JOURNAL] = Journal()
    app.router.add_get("/_sim/stats", _stats)
    app.router.add_get("/_sim/requests", _requests)
    app.router.add_post("/_sim/reset", _reset)
    app.router.add_route("*", "/{tail:.*}", _answer)
    return app


async def _answer(request: web.Request) -> web.StreamResponse:
    if request.path.startswith(CONTROL_PREFIX):
        # Control paths never fall through to the fake API: a typo there must not be counted.
        return _plain(
            behaviour.error_answer(
                404, "NotFound", f"no simulator endpoint {request.method} {request.path}"
            )
        )
    if batch.is_batch(request.method, request.path):
        # Graph counts the requests inside a batch, each on its own, and not the batch.
        _journal(request, throttled=False)
        return await batch.answer(request, request.app[QUOTA])
    quota = request.app[QUOTA]
    claims = read_claims(request.headers.get("Authorization"))
    if request.app[CONFIG].check_tokens:
        refused = auth.check(
            request.method,
            request.path,
            request.headers.get("Authorization"),
            claims,
            request.headers.get("client-request-id"),
        )
        if refused is not None:
            _journal(request, throttled=False)
            return _plain(refused)
    refusal = quota.admit(quota.key(request.method, request.path, claims))
    _journal(request, throttled=refusal is not None)
    if refusal is not None:
        return _plain(
            behaviour.error_answer(
                429,
                "TooManyRequests",
                refusal_message(refusal),
                {"Retry-After": str(refusal.retry_after)},
            )
        )
    try:
        directives = parse(";".join(request.headers.getall(HEADER, [])))
    except DirectiveError as exc:
        return _plain(behaviour.error_answer(400, "BadRequest", str(exc)))
    config = request.app[CONFIG]
    # A directive that chooses the answer wins: the body is then the directive's (echo reads it).
    if config.check_bodies and directives.answer is None:
        refused = await body_check.refusal(request)
        if refused is not None:
            return _plain(refused)
    if HEADER not in request.headers:
        page = paging.answer(request, config.origin, config.list_size, config.page_size)
        if page is not None:
            return page
        if (results := hunting.answer(request)) is not None:
            return results
    return await behaviour.respond(request, directives)


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[QUOTA].stats())


async def _requests(request: web.Request) -> web.Response:
    return web.json_response(request.app[JOURNAL].as_json())


def _journal(request: web.Request, *, throttled: bool) -> None:
    request.app[JOURNAL].add(
        Entry(
            request.app[CONFIG].clock(),
            request.headers.get("client-request-id", ""),
            request.method,
            request.path,
            throttled,
            _token_id(request.headers.get("Authorization")),
        )
    )


def _token_id(authorization: str | None) -> str:
    """The ``uti`` claim of a bearer JWT (a unique id of the token, safe to show), or ""."""
    scheme, _, token = (authorization or "").partition(" ")
    parts = token.strip().split(".")
    if scheme.lower() != "bearer" or len(parts) != 3:
        return ""
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return ""
    uti = claims.get("uti") if isinstance(claims, dict) else None
    return uti if isinstance(uti, str) and uti.isascii() and len(uti) <= 64 else ""


async def _reset(request: web.Request) -> web.Response:
    request.app[QUOTA].reset()
    request.app[JOURNAL].clear()
    return web.json_response({"reset": True})


def _plain(answer: behaviour.Answer) -> web.Response:
    return web.Response(status=answer.status, body=answer.body, headers=answer.headers)


def serve(host: str, port: int, config: SimConfig, idp: IdpSite | None = None) -> None:
    """Run the simulator until SIGINT or SIGTERM; print one line once it listens, and one once
    the identity provider ``idp`` (if any) listens too."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        # Optional: a faster loop makes the simulator a cheaper upstream in benchmarks.
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(host, port, config, idp))


async def _serve(host: str, port: int, config: SimConfig, idp: IdpSite | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    # auto_decompress=False: echo reports request bodies byte for byte, as sent.
    runner = web.AppRunner(
        make_app(config),
        handle_signals=False,
        access_log=None,
        auto_decompress=False,
        shutdown_timeout=_SHUTDOWN_GRACE,
    )
    await runner.setup()
    idp_runner: web.AppRunner | None = None
    shown = f"[{host}]" if ":" in host else host
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        print(f"simulator listening on http://{shown}:{bound}", flush=True)
        if idp is not None:
            # Imported here: the token service's JWT and key handling cost nothing without it.
            from proxy.simulator import identity

            idp_app = identity.make_idp_app(identity.Provider(idp.directory))
            idp_runner = web.AppRunner(idp_app, handle_signals=False, access_log=None)
            await idp_runner.setup()
            await web.TCPSite(
                idp_runner, host, idp.port, ssl_context=identity.tls_context(idp)
            ).start()
            idp_bound = idp_runner.addresses[0][1] if idp_runner.addresses else idp.port
            print(f"identity provider listening on https://{shown}:{idp_bound}", flush=True)
        await stop.wait()
    finally:
        if idp_runner is not None:
            await idp_runner.cleanup()
        await runner.cleanup()
