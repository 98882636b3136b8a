"""An upstream's answer, relayed to the caller: its head, its body as it streams, and its end.

The proxy is a pass-through: an answer goes out as the upstream sent it, chunk by chunk, never
held back for the proxy's own sake — the head leaves at once, in one write with the first bytes
when they are here already. Four things look at the answer on its way through, each without
holding the caller's bytes: an error answer's first ``limits.error_body_cap`` bytes are read for
the classifier and the quota's hints; a paging answer's links are rewritten to the caller's origin
(``proxy.pages``); a ``$batch``'s inner answers are scanned (``proxy.inner_answers``); and the
quota's RateLimit fields are added unless the upstream sent its own.

How an answer ends matters as much as how it goes. A body the upstream breaks off is broken off
to the caller too, by aborting its connection: a caller must never take a partial body for a
whole one. A caller that goes away, or stops reading until its connection's write watchdog
(``timeouts.caller``, ``proxy.callers``) cuts it off, drops the upstream connection with it
instead of draining it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Final

from aiohttp import web
from multidict import CIMultiDict

from proxy import forward, pages, quota_headers
from proxy.codings import CodingError
from proxy.errors import UpstreamError
from proxy.inner_answers import InnerAnswers
from proxy.links import Links
from proxy.outcome import CLIENT_CLOSED, Outcome, Recorder
from proxy.quota.limiter import Admission, Limiter
from proxy.upstream import Response

# A rewritten body up to this long (as the upstream framed it) is read whole and sent with its
# exact Content-Length; a longer one, or one of unknown length, is sent chunked.
_WHOLE_REWRITE: Final = 64 * 1024


class Relay:
    """One listener's relay of upstream answers, and what it needs to look at them on the way."""

    def __init__(
        self,
        recorder: Recorder,
        inner: InnerAnswers,
        limiter: Limiter | None,
        ratelimit: quota_headers.RateLimitFields,
        links: Links | None,
        scheme: str,
    ) -> None:
        self._recorder = recorder
        self._inner = inner
        self._metrics = recorder.metrics
        self._limiter = limiter
        self._ratelimit = ratelimit
        self._links = links
        self._scheme = scheme
        self._cap = recorder.cap

    async def relay(
        self, request: web.BaseRequest, upstream: Response, outcome: Outcome
    ) -> web.StreamResponse:
        """Relay ``upstream``'s answer to the caller of ``request``."""
        headers = forward.response_headers(upstream.headers)
        prefix = b""
        failed = False
        message = ""
        if upstream.status >= 400:
            prefix, complete, failed = await _read_prefix(upstream, self._cap)
            # A body cut short by the upstream is parsed as far as it got (usually _truncated).
            message = self._recorder.upstream_error(
                headers, upstream.status, prefix, complete or failed, outcome
            )
            if upstream.status in (401, 403):
                explained = self._recorder.auth_failure(
                    upstream.status,
                    _authorization(request, outcome),
                    outcome.claims,
                    request.method,
                    outcome.target.partition("?")[0],
                    outcome.route.name,
                )
                outcome.explained.update(explained)
                outcome.cause = explained["auth_cause"]
            if outcome.body_watch is not None:
                outcome.body_watch.explain(upstream.status, headers, outcome, self._metrics)
        hint = quota_headers.upstream_hint(upstream.status, headers.get("Retry-After"), message)
        if hint is not None:
            outcome.explained.update(self._recorder.throttled(hint))
            outcome.cause = hint.reason
        if self._limiter is not None:
            admission = outcome.admission
            await self._limiter.observe_answer(
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
            lambda: outcome.caller_origin or pages.origin_of(request, self._scheme),
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
        scanner = self._inner.scanner(upstream.status, headers, outcome)
        response = _Relayed(status=upstream.status, reason=upstream.reason, headers=headers)
        if ends_connection(request):
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
                failed = await _send(response, pipe.feed(raw), outcome, head=True) or failed
            if scanner is not None:
                await self._inner.record(
                    scanner.feed(raw), outcome, _authorization(request, outcome)
                )
            if not failed and whole is None:
                try:
                    while chunk := await upstream.read():
                        if pipe is None:
                            await response.write(chunk)
                            outcome.bytes_out += len(chunk)
                        elif await _send(response, pipe.feed(chunk), outcome):
                            failed = True
                            break
                        if scanner is not None:
                            # After the write: the caller's bytes are never held for the scan.
                            await self._inner.record(
                                scanner.feed(chunk), outcome, _authorization(request, outcome)
                            )
                    else:
                        if pipe is not None:
                            failed = await _send(response, pipe.finish(), outcome)
                except UpstreamError as exc:
                    failed = True
                    outcome.note = f"upstream failed mid-body ({exc.kind}: {exc.cause})"
        except ConnectionError:
            # The caller went away: drop the upstream connection instead of draining it.
            _caller_left(request, upstream, outcome)
            return response
        except asyncio.CancelledError:
            # aiohttp cancels the handler when the caller's connection is lost.
            _caller_left(request, upstream, outcome)
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

    def _count_links(self, pipe: pages.Pipe, outcome: Outcome) -> None:
        outcome.links_rewritten = pipe.count
        if pipe.count:
            self._metrics.links_rewritten.labels(outcome.route.name).inc(pipe.count)
        if pipe.passed:
            outcome.note = outcome.note or "paging links not rewritten: the body did not decode"


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


def _caller_left(request: web.BaseRequest, upstream: Response, outcome: Outcome) -> None:
    upstream.close()
    outcome.status = CLIENT_CLOSED
    if getattr(request.protocol, "stalled", False):
        outcome.note = "caller stopped taking the answer within timeouts.caller; closed"
    else:
        outcome.note = "caller disconnected mid-response"


class _Relayed(web.StreamResponse):
    """A relayed answer: its head is held until the first write, so both share one send, and it
    carries no header the upstream did not send beyond ``Date`` (added where missing, as RFC 9110
    §6.6.1 asks), the RateLimit fields, a body hint (``proxy.body_watch``) and the proxy's own
    framing."""

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


def ends_connection(request: web.BaseRequest) -> bool:
    """Whether the caller's connection must end with this answer.

    Upgrades are never honoured, and aiohttp's parser may have taken what followed an Upgrade
    request for upgraded bytes. After a chunked request, aiohttp's parser (3.14) carries the last
    trailer field into the headers of the next request on the connection; ending the connection
    keeps every request's headers its own.
    """
    headers = request.headers
    return "Upgrade" in headers or "Transfer-Encoding" in headers


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


def _authorization(request: web.BaseRequest, outcome: Outcome) -> str | None:
    """The ``Authorization`` sent upstream: the proxy's minted token, else the caller's own."""
    return outcome.authorization or request.headers.get("Authorization")
