"""One request, start to end: guard → route → forward → classify → observe.

``Proxy.handle`` is the aiohttp low-level handler of the proxy port. It never raises for anything a
caller or the upstream does: every outcome is an answer (the upstream's, or the proxy's own in the
Defender envelope), one metrics update and one log line.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web
from multidict import CIMultiDict

from proxy import batch, classify, forward, guard, pages, quota_headers
from proxy.batch_answer import InnerAnswer, Scanner
from proxy.catalogue import OTHER_ROUTE, RouteSpec
from proxy.codings import CodingError
from proxy.config import Settings
from proxy.errors import (
    CallerGoneError,
    CallerTimeoutError,
    ProxyError,
    QuotaRefusal,
    RefusalError,
    UpstreamError,
    error_response,
    new_target,
)
from proxy.identity import NO_CLAIMS, Claims, read_claims
from proxy.links import Links
from proxy.logs import RequestLog, get_logger, scrub
from proxy.metrics import Metrics, status_label
from proxy.quota.limiter import Admission, BatchAdmission, Limiter, QuotaExceeded
from proxy.routing import Router
from proxy.upstream import Pool, Response
from proxy.upstreams import Upstream

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:|\-]{1,128}\Z")
_MAX_LOGGED_PATH: Final = 512
_MAX_LOGGED_ID: Final = 128
# Version 4 and the RFC 4122 variant, stamped into a random 128-bit number.
_UUID4_CLEAR: Final = ~((0xF << 76) | (0x3 << 62))
_UUID4_BITS: Final = (0x4 << 76) | (0x2 << 62)
# Status recorded for a caller that went away before its answer was complete (nginx's convention).
CLIENT_CLOSED: Final = 499
# A rewritten body up to this long (as the upstream framed it) is read whole and sent with its
# exact Content-Length; a longer one, or one of unknown length, is sent chunked.
_WHOLE_REWRITE: Final = 64 * 1024


@dataclass(slots=True)
class Outcome:
    """What one request did: the fields of its log line and its metrics."""

    method: str
    path: str
    request_id: str
    route: RouteSpec = OTHER_ROUTE
    #: for ``other``, the path family that keys its quota (``Router.route``)
    family: str = ""
    status: int = 0
    source: str = "proxy"
    upstream_seconds: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    error: dict[str, str] = field(default_factory=dict)
    note: str = ""
    #: the caller's own request id when it was not a sane token (scrubbed, truncated)
    caller_request_id: str = ""
    admission: Admission | BatchAdmission | None = None
    #: the caller's token, decoded (never verified): its ids go into the log line
    claims: Claims = NO_CLAIMS
    #: a ``$batch``: its checked requests, and the inner answers read so far (id -> status)
    batch: batch.Batch | None = None
    answered: dict[str, int] = field(default_factory=dict)
    unknown_answers: int = 0
    links_rewritten: int = 0


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
    ) -> None:
        self.settings = settings
        #: the scheme callers reach this listener with: the scheme of rewritten paging links
        self.scheme = scheme
        self.metrics = metrics
        self.router = router or Router()
        self.limiter = limiter
        self._ratelimit = quota_headers.RateLimitFields(self.router.routes)
        #: the upstream this listener forwards to (default: the settings' first)
        self.upstream = upstream or settings.listeners[0]
        self.pool: Pool | None = None
        self.in_flight = 0
        metrics.in_flight_sources.add(lambda: self.in_flight)
        self._upstream = self.upstream.origin
        self._name = self.upstream.name
        self._cap = settings.limits.error_body_cap
        self._max_body = settings.limits.max_body
        self._caller_timeout = settings.timeouts.caller
        self._request_buffer = settings.limits.request_buffer
        self._batch_body = min(settings.limits.batch_body, settings.limits.max_body)
        self._allowed = guard.networks(settings.allow_from) if settings.allow_from else None
        self._links = Links(self._upstream) if settings.rewrite_links else None
        self._log = get_logger("access")
        self._request_log = RequestLog()

    async def start(self) -> None:
        """Open the upstream connection pool."""
        self.pool = forward.make_pool(self.settings, self._upstream)

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
        self.in_flight += 1
        outcome = Outcome(request.method, request.path[:_MAX_LOGGED_PATH], "")
        outcome.request_id, outcome.caller_request_id = _request_id(request)
        try:
            try:
                credentials = request.headers.getall("Authorization", ())
                guard.check_credentials(credentials)
                outcome.claims = read_claims(credentials[0] if credentials else None)
                if self._allowed is not None:
                    guard.check_caller(request.remote, self._allowed)
                version = request.version
                codings = request.headers.getall("Transfer-Encoding", None)
                guard.check_framing(
                    (version.major, version.minor), None if codings is None else ",".join(codings)
                )
                target = guard.upstream_target(request.method, request.raw_path, self._upstream)
                routed = self.router.route(request.method, target.partition("?")[0])
                outcome.route, outcome.family = routed.spec, routed.family
                guard.check_body_size(request.content_length, self._max_body)
                raw = None
                if outcome.route.name == batch.BATCH_ROUTE:
                    raw = await self._read_batch(request, target, outcome)
                if self.limiter is None:
                    pass
                else:
                    outcome.admission = await self._admit(request, outcome)
                return await self._forward(request, target, outcome, raw)
            except ProxyError as exc:
                return self._answer(exc, outcome, request)
            except CallerGoneError:
                self._caller_gone(outcome, "caller disconnected mid-upload")
                return web.Response(status=CLIENT_CLOSED)
            except asyncio.CancelledError:
                # aiohttp cancels the handler when the caller's connection is lost.
                if outcome.status in (0, 200) and outcome.source == "proxy":
                    self._caller_gone(outcome, "caller disconnected before the answer")
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
            self._observe(outcome, time.perf_counter() - started)

    async def _admit(
        self, request: web.BaseRequest, outcome: Outcome
    ) -> Admission | BatchAdmission:
        assert self.limiter is not None
        asked = quota_headers.control(request.headers)
        try:
            if outcome.batch is not None:
                inners = outcome.batch.requests
                return await self.limiter.admit_batch(
                    [inner.route.name for inner in inners],
                    fresh_request_id(),
                    asked.max_wait,
                    asked.bulk,
                    outcome.claims,
                    [inner.family for inner in inners],
                )
            return await self.limiter.admit(
                outcome.route.name,
                fresh_request_id(),
                asked.max_wait,
                asked.bulk,
                outcome.claims,
                outcome.family,
            )
        except QuotaExceeded as exc:
            raise self._ratelimit.refusal(exc) from None

    async def _read_batch(self, request: web.BaseRequest, target: str, outcome: Outcome) -> bytes:
        """Read a ``$batch`` body whole (up to ``limits.batch_body``) and check it."""
        limit = self._batch_body
        if request.content_length is not None and request.content_length > limit:
            raise batch.too_large(limit)
        if request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        counter = forward.BodyCounter()
        body = forward.limited_body(request.content, self._max_body, counter, self._caller_timeout)
        try:
            parts, whole = await forward.read_up_to(body, limit)
        finally:
            outcome.bytes_in = counter.count
        if not whole:
            raise batch.too_large(limit)
        raw = b"".join(parts)
        outcome.batch = batch.parse(raw, target.partition("?")[0], self.router)
        return raw

    async def _forward(
        self, request: web.BaseRequest, target: str, outcome: Outcome, raw: bytes | None = None
    ) -> web.StreamResponse:
        assert self.pool is not None, "Proxy.start() was not awaited"
        # The framing sent upstream is the proxy's own: the length its parser read, or chunked.
        length = request.content_length
        body = None
        counter = forward.BodyCounter()
        try:
            if raw is not None:
                # A $batch body, read whole already: sent as the caller sent it.
                counter.count = length = len(raw)
                body = forward.replay([raw]) if raw else None
            elif request.body_exists:
                if request.headers.get("Expect", "").lower() == "100-continue":
                    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = forward.limited_body(
                    request.content, self._max_body, counter, self._caller_timeout
                )
                # A body up to limits.request_buffer is read whole before an upstream connection
                # is taken: a caller that uploads slowly, or stalls, holds only its own connection.
                parts, whole = await forward.read_up_to(body, self._request_buffer)
                if whole:
                    length = sum(map(len, parts))
                    body = forward.replay(parts) if length else None
                else:
                    length = None
                    body = forward.replay(parts, body)
            headers = forward.request_headers(request.raw_headers, outcome.request_id, length)
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
            return await self._relay(request, upstream, outcome)
        finally:
            upstream.release()

    async def _relay(
        self, request: web.BaseRequest, upstream: Response, outcome: Outcome
    ) -> web.StreamResponse:
        headers = forward.response_headers(upstream.headers)
        prefix = b""
        failed = False
        message = ""
        if upstream.status >= 400:
            prefix, complete, failed = await _read_prefix(upstream, self._cap)
            # A body cut short by the upstream is parsed as far as it got (usually _truncated).
            message = self._classify(headers, upstream.status, prefix, complete or failed, outcome)
        if self.limiter is not None:
            admission = outcome.admission
            hint = quota_headers.upstream_hint(upstream.status, headers.get("Retry-After"), message)
            await self.limiter.observe_answer(
                outcome.route.name,
                upstream.status,
                hint,
                admission.quota if isinstance(admission, Admission) else None,
            )
            # The upstream's own RateLimit fields stand: an intermediary may not loosen them.
            upstream_says = "RateLimit" in headers or "RateLimit-Policy" in headers
            if isinstance(admission, Admission) and not upstream_says:
                route = outcome.route.name
                headers.extend(self._ratelimit.fields(route, admission.decision))
        length = forward.response_length(upstream.headers)
        pipe, note = pages.plan(
            self._links,
            request.method,
            upstream.status,
            headers,
            pages.origin_of(request, self.scheme),
        )
        outcome.note = note or outcome.note
        whole: bytes | None = None
        if pipe is not None:
            upstream_length, length = length, None
            if upstream_length is not None and upstream_length <= _WHOLE_REWRITE:
                prefix, complete, failed = await _read_prefix(upstream, _WHOLE_REWRITE)
                if complete:
                    try:
                        whole = pages.whole(pipe, prefix)
                        length = len(whole)
                    except CodingError as exc:
                        whole, failed, outcome.note = b"", True, str(exc)
        if length is not None:
            headers["Content-Length"] = str(length)
        scanner = self._batch_scanner(upstream.status, headers, outcome)
        response = _Relayed(status=upstream.status, reason=upstream.reason, headers=headers)
        if _ends_connection(request):
            response.force_close()
        try:
            # A caller that stops taking the answer is cut off by its connection's write
            # watchdog (timeouts.caller, proxy.callers); the waits for the upstream are bounded
            # by timeouts.read.
            await response.prepare(request)
            # The head goes out with the body's first bytes in one write when they are here
            # already, else on its own at once: a slow body must not hold back the status.
            raw = prefix if whole is not None else prefix or upstream.read_ready()
            if pipe is None or whole is not None:
                first = whole if whole is not None else raw
                await response.write(first)
                outcome.bytes_out += len(first)
            else:
                failed = await self._send(response, pipe.feed(raw), outcome, head=True) or failed
            if scanner is not None:
                await self._inner_answers(scanner.feed(raw), outcome)
            if not failed and whole is None:
                try:
                    while chunk := await upstream.read():
                        if pipe is None:
                            await response.write(chunk)
                            outcome.bytes_out += len(chunk)
                        elif await self._send(response, pipe.feed(chunk), outcome):
                            failed = True
                            break
                        if scanner is not None:
                            # After the write: the caller's bytes are never held for the scan.
                            await self._inner_answers(scanner.feed(chunk), outcome)
                    else:
                        if pipe is not None:
                            failed = await self._send(response, pipe.finish(), outcome)
                except UpstreamError as exc:
                    failed = True
                    outcome.note = f"upstream failed mid-body ({exc.kind}: {exc.cause})"
        except ConnectionError:
            # The caller went away: drop the upstream connection instead of draining it.
            self._caller_left(request, upstream, outcome)
            return response
        except asyncio.CancelledError:
            # aiohttp cancels the handler when the caller's connection is lost.
            self._caller_left(request, upstream, outcome)
            raise
        finally:
            if pipe is not None:
                self._count_links(pipe, outcome)
        if failed:
            # Mirror the upstream's broken body: the caller must not take a partial body for whole.
            upstream.close()
            if request.transport is not None:
                request.transport.abort()
            outcome.note = outcome.note or "upstream failed mid-body"
        return response

    def _batch_scanner(
        self, status: int, headers: CIMultiDict[str], outcome: Outcome
    ) -> Scanner | None:
        """A scanner for the inner answers of a ``$batch``'s 200 answer, if it can be read."""
        if outcome.batch is None or status != 200:
            return None
        coding = headers.get("Content-Encoding", "identity").strip().lower()
        if coding != "identity":
            # Never decompressed on its way through, so not read either: said in the log line.
            outcome.note = f"inner answers not read: Content-Encoding {coding[:32]}"
            return None
        return Scanner(self._cap)

    async def _inner_answers(self, found: list[InnerAnswer], outcome: Outcome) -> None:
        """Count and log each inner answer like an outer one; an inner 429 pauses its route."""
        assert outcome.batch is not None
        requests = outcome.batch.by_id()
        for answer in found:
            inner = requests.get(answer.id)
            if inner is None or answer.id in outcome.answered:
                # An id the batch did not send, or a second answer for one: never trusted.
                outcome.unknown_answers += 1
                continue
            outcome.answered[answer.id] = answer.status
            route = inner.route.name
            self.metrics.observe_inner(self._name, route, inner.method, answer.status)
            fields: dict[str, Any] = {
                "upstream": self._name,
                "method": inner.method,
                "route": route,
                "status": answer.status,
                "source": "batch",
                "request_id": outcome.request_id,
                "inner_id": scrub(answer.id[:_MAX_LOGGED_ID]),
                "tid": outcome.claims.tid,
                "app": outcome.claims.app,
            }
            message = ""
            if answer.status >= 400:
                info = classify.classify(
                    answer.body,
                    complete=answer.complete,
                    content_encoding=None,
                    content_type="application/json",
                    cap=self._cap,
                )
                message = info.message
                fields.update(code=info.code, message=info.message, target=info.target)
                if info.inner_code:
                    fields["inner_code"] = info.inner_code
                self.metrics.api_errors.labels(
                    route, status_label(answer.status), self.metrics.codes.label(info.code)
                ).inc()
            self._request_log.write(fields)
            if self.limiter is not None:
                quota = self.limiter.quota_for(route, outcome.claims, inner.family)
                hint = quota_headers.upstream_hint(answer.status, answer.retry_after, message)
                await self.limiter.observe_answer(route, answer.status, hint, quota)

    @staticmethod
    async def _send(
        response: web.StreamResponse, pieces: Iterator[bytes], outcome: Outcome, head: bool = False
    ) -> bool:
        """Write ``pieces`` to the caller (with ``head``: at least one write, so the head goes out
        even when the rewriter holds every byte back); whether the body broke."""
        broke = False
        try:
            for piece in pieces:
                await response.write(piece)
                outcome.bytes_out += len(piece)
                head = False
        except CodingError as exc:
            outcome.note = str(exc)
            broke = True
        if head:
            await response.write(b"")
        return broke

    def _count_links(self, pipe: pages.Pipe, outcome: Outcome) -> None:
        outcome.links_rewritten = pipe.count
        if pipe.count:
            self.metrics.links_rewritten.labels(outcome.route.name).inc(pipe.count)
        if pipe.passed:
            outcome.note = outcome.note or "paging links not rewritten: the body did not decode"

    @staticmethod
    def _caller_gone(outcome: Outcome, note: str) -> None:
        outcome.status = CLIENT_CLOSED
        outcome.note = note

    @staticmethod
    def _caller_left(request: web.BaseRequest, upstream: Response, outcome: Outcome) -> None:
        upstream.close()
        outcome.status = CLIENT_CLOSED
        if getattr(request.protocol, "stalled", False):
            outcome.note = "caller stopped taking the answer within timeouts.caller; closed"
        else:
            outcome.note = "caller disconnected mid-response"

    def _classify(
        self,
        headers: CIMultiDict[str],
        status: int,
        prefix: bytes,
        complete: bool,
        outcome: Outcome,
    ) -> str:
        info = classify.classify(
            prefix,
            complete=complete,
            content_encoding=headers.get("Content-Encoding"),
            content_type=headers.get("Content-Type"),
            cap=self._cap,
        )
        outcome.error = {
            "code": info.code,
            "message": info.message,
            "target": info.target or headers.get("request-id", "")[:128],
        }
        if info.inner_code:
            outcome.error["inner_code"] = info.inner_code
        self.metrics.api_errors.labels(
            outcome.route.name, status_label(status), self.metrics.codes.label(info.code)
        ).inc()
        return info.message

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
        response = error_response(exc.status, exc.code, exc.message, target, exc.headers)
        if isinstance(exc, RefusalError) or _ends_connection(request):
            # The caller may still be sending a body we will never read.
            response.force_close()
        outcome.bytes_out = response.content_length or 0
        return response

    def _observe(self, outcome: Outcome, seconds: float) -> None:
        route = outcome.route.name
        self.metrics.observe_request(
            self._name,
            route,
            outcome.method,
            outcome.status,
            outcome.source,
            seconds,
            outcome.upstream_seconds,
        )
        fields: dict[str, Any] = {
            "upstream": self._name,
            "method": outcome.method,
            "route": route,
            "path": outcome.path,
            "status": outcome.status,
            "source": outcome.source,
            "duration_ms": round(seconds * 1000, 3),
            "upstream_ms": None
            if outcome.upstream_seconds is None
            else round(outcome.upstream_seconds * 1000, 3),
            "bytes_in": outcome.bytes_in,
            "bytes_out": outcome.bytes_out,
            "request_id": outcome.request_id,
            # Validated GUIDs from the token (proxy.identity), or null: never the token itself.
            "tid": outcome.claims.tid,
            "app": outcome.claims.app,
        }
        if outcome.caller_request_id:
            fields["caller_request_id"] = outcome.caller_request_id
        if outcome.error:
            fields.update(outcome.error)
        if outcome.links_rewritten:
            fields["links_rewritten"] = outcome.links_rewritten
        if outcome.note:
            fields["note"] = outcome.note
        if outcome.batch is not None:
            fields["batch_requests"] = len(outcome.batch.requests)
            if outcome.source == "upstream" and outcome.status == 200:
                fields["batch_answers"] = len(outcome.answered)
                if outcome.unknown_answers:
                    fields["batch_unknown_answers"] = outcome.unknown_answers
        if outcome.admission is not None:
            fields["quota"] = outcome.admission.outcome
            fields["admit_ms"] = round(outcome.admission.decided * 1000, 3)
            if outcome.admission.waited:
                fields["wait_ms"] = round(outcome.admission.waited * 1000, 3)
        self._request_log.write(fields)


class _Relayed(web.StreamResponse):
    """A relayed answer: its head is held until the first write, so both share one send, and it
    carries no header the upstream did not send beyond ``Date`` (added where missing, as RFC 9110
    §6.6.1 asks), the RateLimit fields and the proxy's own framing."""

    _send_headers_immediately = False

    def __init__(self, *, status: int, reason: str, headers: CIMultiDict[str]) -> None:
        super().__init__(status=status, reason=reason, headers=headers)
        self._upstream_typed = "Content-Type" in headers
        self._upstream_server = "Server" in headers

    async def _prepare_headers(self) -> None:
        # aiohttp's StreamResponse adds Content-Type (application/octet-stream) and a Server
        # naming aiohttp and Python with their versions; neither came from the upstream.
        await super()._prepare_headers()
        if not self._upstream_typed:
            self._headers.popall("Content-Type", None)
        if not self._upstream_server:
            self._headers.popall("Server", None)


def _ends_connection(request: web.BaseRequest) -> bool:
    """Whether the caller's connection must end with this answer.

    Upgrades are never honoured, and aiohttp's parser may have taken what followed an Upgrade
    request for upgraded bytes. After a chunked request, aiohttp's parser (3.14) carries the last
    trailer field into the headers of the next request on the connection; ending the connection
    keeps every request's headers its own.
    """
    headers = request.headers
    return "Upgrade" in headers or "Transfer-Encoding" in headers


def _request_id(request: web.BaseRequest) -> tuple[str, str]:
    """(the id to send and log, the caller's own id when it was refused).

    The caller's ``client-request-id`` (or ``x-request-id``) when it is a sane token; else a fresh
    GUID, with the caller's value kept, scrubbed and truncated, for the log line.
    """
    headers = request.headers
    given = headers.get("client-request-id") or headers.get("x-request-id")
    if given is None:
        return fresh_request_id(), ""
    # A token the scrubber would change (JWT-shaped, say) would be logged other than it was sent.
    if _REQUEST_ID.match(given) and scrub(given) == given:
        return given, ""
    return fresh_request_id(), scrub(given[:_MAX_LOGGED_ID])


def fresh_request_id() -> str:
    """A random version-4 GUID, as Microsoft's client-request-id expects, without uuid's overhead."""
    h = f"{random.getrandbits(128) & _UUID4_CLEAR | _UUID4_BITS:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


async def _read_prefix(upstream: Response, cap: int) -> tuple[bytes, bool, bool]:
    """Up to ``cap`` (+ one chunk) bytes of an error body: (bytes, complete, upstream failed)."""
    parts: list[bytes] = []
    size = 0
    try:
        while size <= cap:
            chunk = await upstream.read()
            if not chunk:
                return b"".join(parts), True, False
            parts.append(chunk)
            size += len(chunk)
    except UpstreamError:
        return b"".join(parts), False, True
    return b"".join(parts), False, False
