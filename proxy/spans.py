"""The spans of a request, and the OpenTelemetry SDK that exports them.

Imported only when tracing is on (``proxy.tracing.start``). A request gets, parent first:

- ``<METHOD> <route>`` (SERVER), from its arrival to its last byte out, a child of the caller's
  ``traceparent`` (W3C Trace Context) when it sent a valid one;
- ``quota wait`` (INTERNAL), the admission: the store's decision and the wait for the slot, with
  the quota's outcome and the wait; for a request that waited or was refused (or would have
  been, on a shadow route). One admitted at once has none: the server span's quota outcome says
  so, and a recorded span costs some 100 µs of the proxy's CPU, made and exported
  (``bench/tracing.py``);
- ``<METHOD>`` (CLIENT), the exchange with the upstream, from the request sent to the last byte
  of its answer relayed. The upstream gets a ``traceparent`` naming this span (the caller's own
  ``traceparent`` and ``tracestate`` are replaced, never sent twice: ``proxy.forward``). A trace
  the sampler does not record gets no spans but the server span's unrecorded one, whose id the
  upstream's ``traceparent`` then names, flagged not sampled: the trace goes on past the proxy.

The attributes say what the request's log line says and nothing more: method, path (without its
query, scrubbed as the log line's is), route, status, error code and target (scrubbed), the
quota's outcome. No header goes into a span, so no credential can.

Every time is given to the SDK explicitly and no span is made current, so the request path
attaches no context to its task; the SDK's batch processor exports from its own thread.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from multidict import CIMultiDictProxy
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue
from yarl import URL

from proxy import __version__
from proxy.scrubber import scrub

if TYPE_CHECKING:
    from proxy.outcome import Outcome

#: ``service.name`` when neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES names one.
DEFAULT_SERVICE: Final = "defender-proxy"
#: The longest error code or target put in a span (as the recent-errors ring keeps them).
MAX_FIELD: Final = 128
# Methods outside this set are `_OTHER` (OpenTelemetry's HTTP conventions): span names stay few.
_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
_PROPAGATOR: Final = TraceContextTextMapPropagator()

Attributes = dict[str, AttributeValue]


class Spans:
    """The process's tracer: one batch processor per exporter, and the resource that names it."""

    def __init__(self, exporters: Sequence[str], ca_bundle: str | None = None) -> None:
        # The process stops the SDK itself, within a bound (proxy.tracing.stop), not at exit.
        self.provider = TracerProvider(resource=_resource(), shutdown_on_exit=False)
        for name in exporters:
            self.provider.add_span_processor(BatchSpanProcessor(_exporter(name, ca_bundle)))
        self._tracer = self.provider.get_tracer("defender-proxy", __version__)

    def listener(self, name: str, origin: str, scheme: str) -> ListenerSpans:
        """The spans of one listener's requests: named ``name``, forwarding to ``origin``."""
        return ListenerSpans(self._tracer, name, origin, scheme)

    def shutdown(self) -> None:
        """Export what is queued and stop the exporters (blocking: run it off the loop)."""
        self.provider.shutdown()


class ListenerSpans:
    """What every span of one listener's requests shares: its upstream, scheme and tracer."""

    __slots__ = ("_name", "_scheme", "host", "origin", "port", "tracer")

    def __init__(self, tracer: trace.Tracer, name: str, origin: str, scheme: str) -> None:
        self.tracer = tracer
        self._name = name
        self._scheme = scheme
        url = URL(origin)
        # Scheme, host and port only: no user or password an origin might be written with.
        self.origin = str(url.origin())
        self.host = url.host or ""
        self.port = url.port or 0

    def request(self, headers: CIMultiDictProxy[str], outcome: Outcome) -> RequestSpans:
        """Start the server span of a request whose headers are ``headers``."""
        parent = _PROPAGATOR.extract(headers)
        method = outcome.method if outcome.method in _METHODS else "_OTHER"
        path = scrub(outcome.path)
        server = self.tracer.start_span(
            method,
            parent,
            SpanKind.SERVER,
            {
                "http.request.method": method,
                "url.scheme": self._scheme,
                "url.path": path,
                "defender.upstream": self._name,
                "defender.request_id": outcome.request_id,
            },
        )
        return RequestSpans(self, server, method, path)


class RequestSpans:
    """The spans of one request, filled in by the handler as the request goes."""

    __slots__ = (
        "_admitting",
        "_client",
        "_context",
        "_listener",
        "_method",
        "_path",
        "quota",
        "server",
    )

    def __init__(self, listener: ListenerSpans, server: trace.Span, method: str, path: str) -> None:
        self._listener = listener
        self.server = server
        self._context = trace.set_span_in_context(server)
        self._method = method
        self._path = path
        self._admitting = 0
        self._client: trace.Span | None = None
        #: the quota's outcome (``admitted``, ``waited``, ``refused`` …); "" before admission
        self.quota = ""

    def ids(self) -> tuple[str, str]:
        """The trace id and the server span's id, in hex as ``traceparent`` writes them."""
        context = self.server.get_span_context()
        return format(context.trace_id, "032x"), format(context.span_id, "016x")

    def admitting(self) -> None:
        """The quota's admission starts."""
        self._admitting = time.time_ns()

    def admitted(self, outcome: str, waited: float) -> None:
        """The quota decided: ``outcome`` after a wait of ``waited`` seconds."""
        self.quota = outcome
        if outcome == "admitted" or not self.server.is_recording():
            return
        span = self._listener.tracer.start_span(
            "quota wait",
            self._context,
            attributes={
                "defender.quota.outcome": outcome,
                "defender.quota.wait_ms": round(waited * 1000, 3),
            },
            start_time=self._admitting,
        )
        if outcome == "refused":
            span.set_status(StatusCode.ERROR, "no slot within the caller's deadline")
        span.end()

    def sending(self) -> list[tuple[bytes, bytes]]:
        """Start the upstream exchange: the header lines that carry its span to the upstream."""
        carrier: dict[str, str] = {}
        if not self.server.is_recording():
            # Nothing of this trace is recorded here, so no span of it is made either: the
            # upstream's parent is the server span's id, flagged as the sampler decided.
            _PROPAGATOR.inject(carrier, self._context)
            return [
                (name.encode("ascii"), value.encode("ascii")) for name, value in carrier.items()
            ]
        listener = self._listener
        span = self._client = listener.tracer.start_span(
            self._method if self._method != "_OTHER" else "HTTP",
            self._context,
            SpanKind.CLIENT,
            {
                "http.request.method": self._method,
                "server.address": listener.host,
                "server.port": listener.port,
                "url.full": listener.origin + self._path,
            },
        )
        _PROPAGATOR.inject(carrier, trace.set_span_in_context(span))
        return [(name.encode("ascii"), value.encode("ascii")) for name, value in carrier.items()]

    def answered(self, status: int) -> None:
        """The upstream's answer (with ``status``) was relayed: the exchange ends."""
        span, self._client = self._client, None
        if span is None:
            return
        span.set_attribute("http.response.status_code", status)
        # OpenTelemetry's HTTP conventions: a client span's 4xx is an error too.
        if status >= 400:
            span.set_attribute("error.type", str(status))
            span.set_status(StatusCode.ERROR)
        span.end()

    def end(self, outcome: Outcome) -> None:
        """The request is over: the server span (and an exchange that broke off) ends."""
        client, self._client = self._client, None
        if client is not None:
            # The exchange ended without an answer: the upstream failed, or the caller left.
            client.set_attribute("error.type", outcome.error.get("kind") or "incomplete")
            client.set_status(StatusCode.ERROR)
            client.end()
        server = self.server
        if not server.is_recording():
            server.end()
            return
        route = outcome.route.name
        server.update_name(f"{self._method if self._method != '_OTHER' else 'HTTP'} {route}")
        attributes: Attributes = {
            "http.response.status_code": outcome.status,
            "defender.route": route,
            "defender.source": outcome.source,
        }
        if self.quota:
            attributes["defender.quota.outcome"] = self.quota
        error = outcome.error
        if error:
            attributes["defender.error.code"] = scrub(error.get("code", "")[:MAX_FIELD])
            attributes["defender.error.target"] = scrub(error.get("target", "")[:MAX_FIELD])
        if outcome.status >= 500:
            attributes["error.type"] = error.get("kind") or str(outcome.status)
            server.set_status(StatusCode.ERROR)
        server.set_attributes(attributes)
        server.end()


def _resource() -> Resource:
    """The SDK's resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES), named defender-proxy
    unless those name it, with the proxy's version unless they give one."""
    detected = Resource.create()
    named = detected.attributes.get(SERVICE_NAME)
    if not isinstance(named, str) or named.startswith("unknown_service"):
        detected = detected.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE}))
    return Resource({SERVICE_VERSION: __version__}).merge(detected)


#: The variables that name the CA an OTLP exporter trusts; either wins over ``tls.ca_bundle``.
_CERTIFICATE_VARIABLES: Final = (
    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
    "OTEL_EXPORTER_OTLP_CERTIFICATE",
)


def _exporter(name: str, ca_bundle: str | None) -> SpanExporter:
    if name == "console":
        # stdout carries the JSON log lines.
        return ConsoleSpanExporter(out=sys.stderr)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # Endpoint, headers, timeout, compression and certificates come from OTEL_EXPORTER_OTLP_*;
    # without a certificate of theirs, the collector is trusted as every TLS peer of the proxy
    # is, by tls.ca_bundle (the argument wins over the variables in the SDK, so it is given
    # only when they say nothing).
    if ca_bundle is not None and not any(os.environ.get(v) for v in _CERTIFICATE_VARIABLES):
        return OTLPSpanExporter(certificate_file=ca_bundle)
    return OTLPSpanExporter()
