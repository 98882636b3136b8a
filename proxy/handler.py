"""One request, start to end: guard → route → admit → forward → relay → observe.

``Proxy.handle`` is the aiohttp low-level handler of the proxy port. It never raises for anything a
caller or the upstream does: every outcome is an answer (the upstream's, or the proxy's own in the
Defender envelope), one metrics update and one log line.

This module owns the request path up to the upstream's answer: the guard's checks, routing, reading
a ``$batch`` (``proxy.batch``), admission by the quota, forwarding the body, and the proxy's own
answer when any step refuses or fails. What follows has modules of its own, so that the path reads
here in one place: ``proxy.relay`` takes the upstream's answer to the caller (and
``proxy.inner_answers`` the inner answers of a batch on the way), and ``proxy.outcome`` holds what
the request did and writes its one record.

What a listener takes from the settings is one immutable ``Setup`` (router, limits, caps, the
relay and recorder made from them). A request reads it once, at its start, and keeps it to its
end; a reload (``Proxy.reconfigure``) swaps in a new one for the requests that start after it.

While tracing is on, the request's spans (``proxy.spans``, on the outcome) are told when
admission and the upstream exchange start and end; while it is off that costs one ``None`` test
at each of those points.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web
from yarl import URL

from proxy import absolute_form, batch, body_watch, forward, guard, quota_headers
from proxy.auth_cause import audiences_for
from proxy.config import Settings
from proxy.errors import (
    CallerGoneError,
    CallerTimeoutError,
    ProxyError,
    QuotaRefusal,
    RefusalError,
    TokenUnavailableError,
    UpstreamError,
    error_response,
    new_target,
)
from proxy.identity import Labels, read_claims
from proxy.inner_answers import InnerAnswers
from proxy.links import Links
from proxy.logs import get_logger
from proxy.metrics import Metrics
from proxy.outcome import (
    CLIENT_CLOSED,
    MAX_LOGGED_PATH,
    Outcome,
    Recorder,
    caller_gone,
    fresh_request_id,
    request_id,
)
from proxy.quota.limiter import Admission, BatchAdmission, Limiter, QuotaExceeded
from proxy.recent_errors import RecentErrors
from proxy.relay import Relay, ends_connection
from proxy.routing import Router
from proxy.upstream import Pool
from proxy.upstreams import Upstream

if TYPE_CHECKING:
    from proxy.spans import ListenerSpans, Spans
    from proxy.tokens import TokenSource


@dataclass(frozen=True, slots=True)
class Setup:
    """Everything one listener's requests take from the settings, as of one load of them."""

    settings: Settings
    router: Router
    ratelimit: quota_headers.RateLimitFields
    recorder: Recorder
    relay: Relay
    #: the networks callers may come from (None: any)
    allowed: guard.Networks | None
    max_body: int
    caller_timeout: float
    request_buffer: int
    batch_body: int


class Proxy:
    """One listener's request handler and the state it needs: its upstream's origin, pool and
    router. The limiter and the metrics may be shared with the process's other listeners."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        router: Router | None = None,
        limiter: Limiter | None = None,
        upstream: Upstream | None = None,
        scheme: str = "http",
        errors: RecentErrors | None = None,
        tracing: Spans | None = None,
        tokens: TokenSource | None = None,
    ) -> None:
        #: the scheme callers reach this listener with: the scheme of rewritten paging links
        self.scheme = scheme
        self.metrics = metrics
        self.limiter = limiter
        #: the upstream this listener forwards to (default: the settings' first)
        self.upstream = upstream or settings.listeners[0]
        self.pool: Pool | None = None
        self.in_flight = 0
        metrics.in_flight_sources.add(lambda: self.in_flight)
        self._upstream = self.upstream.origin
        self._name = self.upstream.name
        listen = self.upstream.listen
        self._listener = absolute_form.Listener(self._upstream, scheme, listen.host, listen.port)
        self._errors = errors
        #: where a request that brings no ``Authorization`` gets its token (None: it goes without)
        self.tokens = tokens
        self._log = get_logger("access")
        #: this listener's spans, while tracing is on (None: off, and nothing is traced)
        self._spans: ListenerSpans | None = (
            None if tracing is None else tracing.listener(self._name, self._upstream, scheme)
        )
        self.setup = self._setup(settings, router or Router())

    @property
    def settings(self) -> Settings:
        """The settings in force for requests that start now."""
        return self.setup.settings

    @property
    def router(self) -> Router:
        """The router in force for requests that start now."""
        return self.setup.router

    def _setup(self, settings: Settings, router: Router) -> Setup:
        limits = settings.limits
        ratelimit = quota_headers.RateLimitFields(router.routes)
        recorder = Recorder(
            self._name,
            self.metrics,
            limits.error_body_cap,
            self._errors,
            audiences=audiences_for(self._upstream),
            labels=Labels(dict(settings.throttle.identities.names)),
        )
        relay = Relay(
            recorder,
            InnerAnswers(recorder, self.limiter),
            self.limiter,
            ratelimit,
            Links(self._upstream) if settings.rewrite_links else None,
            self.scheme,
        )
        return Setup(
            settings,
            router,
            ratelimit,
            recorder,
            relay,
            guard.networks(settings.allow_from) if settings.allow_from else None,
            limits.max_body,
            settings.timeouts.caller,
            limits.request_buffer,
            min(limits.batch_body, limits.max_body),
        )

    def reconfigure(self, settings: Settings, upstream: Upstream, router: Router) -> None:
        """Serve the requests that start from now on with ``settings``, this listener's entry
        ``upstream`` in them and ``router``; those in flight finish with what they started with.

        The listener itself (its name, origin, address, catalogue) and its pool's size and TLS
        stay as they were at start (``proxy.reload`` keeps what needs a restart). The pool takes
        the new timeouts for the waits that begin after the call.
        """
        if (upstream.name, upstream.origin) != (self.upstream.name, self._upstream):
            raise ValueError(f"listener {self.upstream.name!r} cannot change its upstream")
        self.upstream = upstream
        self.setup = self._setup(settings, router)
        if self.pool is not None:
            timeouts = settings.timeouts
            self.pool.retime(timeouts.connect, timeouts.read, timeouts.pool)

    async def start(self, tls: ssl.SSLContext | None = None) -> None:
        """Open the upstream connection pool, over ``tls`` if given (one context shared by every
        listener of a process) else a context of its own."""
        self.pool = forward.make_pool(self.settings, self._upstream, tls)

    async def probe(self) -> None:
        """Connect to the upstream once and hang up (``Pool.probe``): can it be reached?"""
        assert self.pool is not None, "Proxy.start() was not awaited"
        await self.pool.probe()

    async def close_pool(self) -> None:
        """Close the upstream connection pool (a shared limiter stays open)."""
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def close(self) -> None:
        """Close the upstream connection pool and the quota store."""
        await self.close_pool()
        if self.limiter is not None:
            await self.limiter.close()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one request on the proxy port."""
        started = time.perf_counter()
        setup = self.setup
        self.in_flight += 1
        outcome = Outcome(request.method, request.path[:MAX_LOGGED_PATH], "")
        outcome.request_id, outcome.caller_request_id = request_id(request)
        if self._spans is not None:
            outcome.trace = self._spans.request(request.headers, outcome)
        try:
            try:
                credentials = request.headers.getall("Authorization", ())
                guard.check_credentials(credentials)
                outcome.claims = read_claims(credentials[0] if credentials else None)
                if setup.allowed is not None:
                    guard.check_caller(request.remote, setup.allowed)
                version = request.version
                codings = request.headers.getall("Transfer-Encoding", None)
                guard.check_framing(
                    (version.major, version.minor), None if codings is None else ",".join(codings)
                )
                target = self._target(request, outcome)
                routed = setup.router.route(request.method, target.partition("?")[0])
                outcome.route, outcome.family = routed.spec, routed.family
                guard.check_body_size(request.content_length, setup.max_body)
                raw = None
                if outcome.route.name == batch.BATCH_ROUTE:
                    raw = await self._read_batch(setup, request, target, outcome)
                if not credentials and self.tokens is not None:
                    # After every check of the caller and its request: a caller the proxy
                    # refuses never makes it mint. The token's claims key the quota.
                    minted = await self.tokens.token()
                    outcome.authorization = minted.authorization
                    outcome.claims = minted.claims
                if self.limiter is not None:
                    outcome.admission = await self._admit(setup, request, outcome)
                return await self._forward(setup, request, target, outcome, raw)
            except ProxyError as exc:
                return self._answer(exc, outcome, request)
            except CallerGoneError:
                caller_gone(outcome, "caller disconnected mid-upload")
                return web.Response(status=CLIENT_CLOSED)
            except asyncio.CancelledError:
                # aiohttp cancels the handler when the caller's connection is lost.
                if outcome.status in (0, 200) and outcome.source == "proxy":
                    caller_gone(
                        outcome,
                        "caller disconnected while waiting for its quota slot"
                        if outcome.queued is not None
                        else "caller disconnected before the answer",
                    )
                raise
            except Exception as exc:
                self._log.error("unexpected error", error=repr(exc), exc_info=True)
                return self._answer(
                    ProxyError(
                        500, "InternalServerError", "the proxy failed to handle the request"
                    ),
                    outcome,
                    request,
                )
        finally:
            self.in_flight -= 1
            setup.recorder.observe(outcome, time.perf_counter() - started)
            if outcome.trace is not None:
                outcome.trace.end(outcome)

    def _target(self, request: web.BaseRequest, outcome: Outcome) -> str:
        """The guard's origin-form target, and where it came in absolute-form naming this
        listener, the origin the caller named (RFC 9112 §3.2.2: it wins over ``Host``)."""
        raw = request.raw_path
        if raw.startswith("/") and request.method != "CONNECT":
            outcome.target = guard.upstream_target(request.method, raw, self._upstream)
            return outcome.target
        transport = request.transport
        local = None if transport is None else transport.get_extra_info("sockname")
        listener = self._listener.seen_from(
            (str(local[0]), int(local[1])) if isinstance(local, tuple) else None
        )
        outcome.target = guard.upstream_target(request.method, raw, self._upstream, listener)
        outcome.caller_origin = absolute_form.caller_origin(raw, listener)
        # Logged as the origin-form target would be: aiohttp's path of "http://h:p?x" is "", not "/".
        path = URL.build(path=outcome.target.partition("?")[0], encoded=True).path
        outcome.path = path[:MAX_LOGGED_PATH]
        return outcome.target

    async def _admit(
        self, setup: Setup, request: web.BaseRequest, outcome: Outcome
    ) -> Admission | BatchAdmission:
        assert self.limiter is not None
        asked = quota_headers.control(request.headers)
        started = time.perf_counter()
        trace = outcome.trace
        if trace is not None:
            trace.admitting()
        admission: Admission | BatchAdmission
        try:
            if outcome.batch is not None:
                inners = outcome.batch.requests
                admission = await self.limiter.admit_batch(
                    [inner.route.name for inner in inners],
                    fresh_request_id(),
                    asked.max_wait,
                    asked.bulk,
                    outcome.claims,
                    [inner.family for inner in inners],
                )
            else:
                admission = await self.limiter.admit(
                    outcome.route.name,
                    fresh_request_id(),
                    asked.max_wait,
                    asked.bulk,
                    outcome.claims,
                    outcome.family,
                    client=asked.client,
                )
        except QuotaExceeded as exc:
            if trace is not None:
                trace.admitted("refused", 0.0)
            raise setup.ratelimit.refusal(exc) from None
        except asyncio.CancelledError:
            # The caller left while queued for its slot (the limiter gives the slot back): its
            # line says so, and for how long it had waited, which its own timeout decided.
            outcome.queued = time.perf_counter() - started
            raise
        if trace is not None:
            trace.admitted(admission.outcome, admission.waited)
        return admission

    async def _read_batch(
        self, setup: Setup, request: web.BaseRequest, target: str, outcome: Outcome
    ) -> bytes:
        """Read a ``$batch`` body whole (up to ``limits.batch_body``) and check it."""
        counter = forward.BodyCounter()
        try:
            raw, outcome.batch = await batch.read(
                request,
                target.partition("?")[0],
                setup.router,
                setup.batch_body,
                setup.max_body,
                setup.caller_timeout,
                counter,
            )
        finally:
            outcome.bytes_in = counter.count
        return raw

    async def _forward(
        self,
        setup: Setup,
        request: web.BaseRequest,
        target: str,
        outcome: Outcome,
        raw: bytes | None = None,
    ) -> web.StreamResponse:
        assert self.pool is not None, "Proxy.start() was not awaited"
        # The framing sent upstream is the proxy's own: the length its parser read, or chunked.
        length = request.content_length
        body = None
        counter = forward.BodyCounter()
        if raw is None:
            outcome.body_watch = body_watch.watch(request, target)
        try:
            if raw is not None:
                # A $batch body, read whole already: sent as the caller sent it.
                counter.count = length = len(raw)
                body = forward.replay([raw]) if raw else None
            elif request.body_exists:
                if request.headers.get("Expect", "").lower() == "100-continue":
                    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = forward.limited_body(
                    request.content, setup.max_body, counter, setup.caller_timeout
                )
                if outcome.body_watch is not None:
                    body = outcome.body_watch.tee(body)
                # A body up to limits.request_buffer is read whole before an upstream connection
                # is taken: a caller that uploads slowly, or stalls, holds only its own connection.
                parts, whole = await forward.read_up_to(body, setup.request_buffer)
                if whole:
                    length = sum(map(len, parts))
                    body = forward.replay(parts) if length else None
                else:
                    length = None
                    body = forward.replay(parts, body)
            headers = forward.request_headers(
                request.raw_headers,
                outcome.request_id,
                length,
                None if outcome.trace is None else outcome.trace.sending(),
                outcome.authorization,
            )
            if outcome.batch is not None:
                # Real clients ask for gzip; a compressed answer would hide its inner 429s.
                headers = forward.uncompressed(headers)
            sent = time.perf_counter()
            upstream = await self.pool.request(
                request.method, target, headers, body, chunked=length is None
            )
        finally:
            outcome.bytes_in = counter.count
        outcome.upstream_seconds = time.perf_counter() - sent
        outcome.source = "upstream"
        outcome.status = upstream.status
        try:
            return await setup.relay.relay(request, upstream, outcome)
        finally:
            upstream.release()
            if outcome.trace is not None:
                outcome.trace.answered(upstream.status)

    def _answer(self, exc: ProxyError, outcome: Outcome, request: web.BaseRequest) -> web.Response:
        target = new_target()
        outcome.status = exc.status
        outcome.source = "proxy"
        outcome.error = {"code": exc.code, "message": exc.message, "target": target}
        if isinstance(exc, UpstreamError):
            self.metrics.upstream_failures.labels(outcome.route.name, exc.kind).inc()
            outcome.error["kind"] = exc.kind
            outcome.error["cause"] = exc.cause
        elif isinstance(exc, CallerTimeoutError):
            self.metrics.caller_timeouts.labels("body").inc()
        elif isinstance(exc, QuotaRefusal):
            outcome.note = "refused by the quota"
        elif isinstance(exc, TokenUnavailableError):
            outcome.explained["token_error"] = exc.token_error
        response = error_response(
            exc.status, exc.code, exc.message, target, exc.headers, exc.reason
        )
        if isinstance(exc, RefusalError) or ends_connection(request):
            # The caller may still be sending a body we will never read.
            response.force_close()
        outcome.bytes_out = response.content_length or 0
        return response
