"""What one request did, and its record: the ``Outcome``, the request id, the log line and metrics.

Every request, whatever became of it, ends in exactly one ``Outcome`` written once: one metrics
update and one canonical ``request`` log line (structlog's best practice). The steps of the request
path (guard, admission, forwarding, relay, the inner answers of a batch) only fill the outcome in;
none of them logs or counts the request itself, so no path can log it twice or not at all.

The request id is settled here too, first thing, because every later step carries it: upstream
as ``client-request-id``, into the proxy's own error envelopes and into the log line.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web
from multidict import CIMultiDict

from proxy import auth_cause, batch, classify, hints
from proxy.body_watch import BodyWatch
from proxy.catalogue import OTHER_ROUTE, RouteSpec
from proxy.identity import NO_CLAIMS, Claims, Labels
from proxy.logs import RequestLog, scrub
from proxy.metrics import Metrics, status_label
from proxy.quota.limiter import Admission, BatchAdmission
from proxy.recent_errors import RecentErrors
from proxy.units import Limit

if TYPE_CHECKING:
    from proxy.spans import RequestSpans

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:|\-]{1,128}\Z")
MAX_LOGGED_PATH: Final = 512
MAX_LOGGED_ID: Final = 128
# Version 4 and the RFC 4122 variant, stamped into a random 128-bit number.
_UUID4_CLEAR: Final = ~((0xF << 76) | (0x3 << 62))
_UUID4_BITS: Final = (0x4 << 76) | (0x2 << 62)
# Status recorded for a caller that went away before its answer was complete (nginx's convention).
CLIENT_CLOSED: Final = 499


@dataclass(slots=True)
class Outcome:
    """What one request did: the fields of its log line and its metrics."""

    method: str
    path: str
    request_id: str
    #: the origin-form target sent upstream, once the guard has passed it
    target: str = ""
    #: the origin an absolute-form target naming the listener named ("" otherwise): paging
    #: links are rewritten to it rather than to ``Host``
    caller_origin: str = ""
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
    #: seconds the caller had waited for its quota slot when it left while queued (else None)
    queued: float | None = None
    #: the caller's token, decoded (never verified): its ids go into the log line
    claims: Claims = NO_CLAIMS
    #: ``Bearer …``, the token the proxy minted for a caller that sent none (None: the caller's
    #: own, if any, went as it came). Never written to a log line or a metric
    authorization: str | None = None
    #: a ``$batch``: its checked requests, and the inner answers read so far (id -> status)
    batch: batch.Batch | None = None
    answered: dict[str, int] = field(default_factory=dict)
    unknown_answers: int = 0
    links_rewritten: int = 0
    #: why the request failed, in one word: the ``auth_cause`` of a 401 or 403, the quota a 429
    #: hit (``calls``, ``cpu``, ``unknown``), the kind of a body hint on a 400; "" if none
    cause: str = ""
    #: the explanation's own log fields (``auth_cause``, ``missing_role``, ``hint`` …)
    explained: dict[str, Any] = field(default_factory=dict)
    #: the request body's keys, watched for a 400's hints (``proxy.body_watch``)
    body_watch: BodyWatch | None = None
    #: the request's spans, while tracing is on (``proxy.spans``)
    trace: RequestSpans | None = None


def caller_gone(outcome: Outcome, note: str) -> None:
    """Record that the caller went away before its answer was complete."""
    outcome.status = CLIENT_CLOSED
    outcome.note = note


class Recorder:
    """One listener's record of its requests: the upstream's error answers classified, and the
    metrics and log line of each request. The inner answers of a batch write through ``log``.
    Error answers are also kept in ``errors``, the process's ring of recent ones, when given."""

    def __init__(
        self,
        name: str,
        metrics: Metrics,
        cap: int,
        errors: RecentErrors | None = None,
        audiences: frozenset[str] | None = None,
        labels: Labels | None = None,
    ) -> None:
        self.name = name
        self.metrics = metrics
        self.cap = cap
        self.log = RequestLog()
        self.errors = errors
        #: the token audiences of the upstream's API (``auth_cause.audiences_for``)
        self.audiences = audiences
        self.labels = labels or Labels({})

    def auth_failure(
        self,
        status: int,
        authorization: str | None,
        claims: Claims,
        method: str,
        path: str,
        route: str,
    ) -> dict[str, Any]:
        """Explain an upstream's 401 or 403 from the token sent with it: counted, and the log
        fields that say why (``auth_cause`` and its figure)."""
        explained = auth_cause.explain(
            authorization, claims, method, path, self.audiences, time.time()
        )
        self.metrics.auth_failures.labels(
            route, status_label(status), explained.cause, self.labels.of(claims.app)
        ).inc()
        return explained.fields()

    @staticmethod
    def throttled(hint: hints.Hint) -> dict[str, Any]:
        """The log fields of a throttled answer: the quota it hit (``cause``: calls, cpu or
        unknown) and the limit its body states, if it states one (``stated_limit``)."""
        fields: dict[str, Any] = {"cause": hint.reason}
        if hint.stated is not None:
            fields["stated_limit"] = str(Limit(*hint.stated))
        return fields

    def upstream_error(
        self,
        headers: CIMultiDict[str],
        status: int,
        prefix: bytes,
        complete: bool,
        outcome: Outcome,
    ) -> str:
        """Classify the upstream's error answer from the first bytes of its body into the
        outcome's error fields and the error metric; its message (for the quota's hints)."""
        info = classify.classify(
            prefix,
            complete=complete,
            content_encoding=headers.get("Content-Encoding"),
            content_type=headers.get("Content-Type"),
            cap=self.cap,
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

    def observe(self, outcome: Outcome, seconds: float) -> None:
        """The request's metrics, its one log line, and its record among the recent errors."""
        route = outcome.route.name
        if outcome.status >= 400 and self.errors is not None:
            self.errors.observe(self.name, outcome)
        self.metrics.observe_request(
            self.name,
            route,
            outcome.method,
            outcome.status,
            outcome.source,
            seconds,
            outcome.upstream_seconds,
        )
        fields: dict[str, Any] = {
            "upstream": self.name,
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
        if outcome.authorization is not None:
            fields["credential"] = "proxy"
        if outcome.caller_request_id:
            fields["caller_request_id"] = outcome.caller_request_id
        if outcome.trace is not None:
            fields["trace_id"], fields["span_id"] = outcome.trace.ids()
        if outcome.error:
            fields.update(outcome.error)
        if outcome.explained:
            fields.update(outcome.explained)
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
        elif outcome.queued is not None:
            fields["quota"] = "waiting"
            fields["wait_ms"] = round(outcome.queued * 1000, 3)
        self.log.write(fields)


def request_id(request: web.BaseRequest) -> tuple[str, str]:
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
    return fresh_request_id(), scrub(given[:MAX_LOGGED_ID])


def fresh_request_id() -> str:
    """A random version-4 GUID, as Microsoft's client-request-id expects, without uuid's overhead."""
    h = f"{random.getrandbits(128) & _UUID4_CLEAR | _UUID4_BITS:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
