"""A stand-in OpenTelemetry collector: OTLP over HTTP with protobuf, on 127.0.0.1.

It answers ``POST /v1/traces`` (``application/x-protobuf``, gzip or not) as a collector does,
decodes each ``ExportTraceServiceRequest`` with opentelemetry-proto and keeps every span, flat,
with its resource's attributes, and the raw bodies too (a test searches them for planted secrets).
Anything else is a 404, a body that does not decode a 400.

Tests run it in-process (``Collector``); ``bench.overhead`` runs it as a process
(``python -m tests.otlp_collector PORT``): it then keeps only counts, served on ``GET /stats``.
"""

from __future__ import annotations

import asyncio
import gzip
import signal
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class ExportedSpan:
    """One span as the collector received it; ids in hex, as ``traceparent`` writes them."""

    trace_id: str
    span_id: str
    #: "" for a root span
    parent_span_id: str
    name: str
    #: SERVER, CLIENT, INTERNAL …
    kind: str
    attributes: dict[str, Any]
    #: UNSET, OK or ERROR
    status: str
    start_ns: int
    end_ns: int
    resource: dict[str, Any] = field(default_factory=dict)


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return None if kind is None else getattr(value, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    items: list[KeyValue] = list(pairs)
    return {pair.key: _value(pair.value) for pair in items}


def _span(span: Span, resource: dict[str, Any]) -> ExportedSpan:
    return ExportedSpan(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex(),
        name=span.name,
        kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
        attributes=_attributes(span.attributes),
        status=Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
        start_ns=span.start_time_unix_nano,
        end_ns=span.end_time_unix_nano,
        resource=resource,
    )


def decode(body: bytes) -> list[ExportedSpan]:
    """The spans of one ``ExportTraceServiceRequest`` body."""
    request = ExportTraceServiceRequest.FromString(body)
    spans: list[ExportedSpan] = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            spans.extend(_span(span, resource) for span in scope_spans.spans)
    return spans


class Collector:
    """The collector on a free loopback port; ``url`` is what ``OTEL_EXPORTER_OTLP_ENDPOINT``
    takes. With ``keep=False`` it only counts (a benchmark's long runs)."""

    def __init__(self, keep: bool = True, tls: ssl.SSLContext | None = None) -> None:
        self.spans: list[ExportedSpan] = []
        #: served over HTTPS with this context when given
        self._tls = tls
        self.bodies: list[bytes] = []
        self.exports = 0
        self.span_count = 0
        self._keep = keep
        self._arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The collector's base URL."""
        scheme = "http" if self._tls is None else "https"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        """Listen on 127.0.0.1 (``port``, default a free one)."""
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        app.router.add_get("/stats", self._stats)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port, ssl_context=self._tls)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(
        self, found: Callable[[list[ExportedSpan]], bool], timeout: float = 10.0
    ) -> list[ExportedSpan]:
        """Every span received, once ``found`` holds of them (AssertionError after ``timeout``)."""
        try:
            async with asyncio.timeout(timeout):
                while not found(self.spans):
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            names = [(span.name, span.trace_id) for span in self.spans]
            raise AssertionError(f"spans not exported in {timeout}s; received {names}") from None
        return self.spans

    async def _traces(self, request: web.Request) -> web.Response:
        if request.content_type != PROTOBUF:
            return web.Response(status=415, text=f"expected {PROTOBUF}")
        body = await request.read()
        if request.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        try:
            spans = decode(body)
        except DecodeError as exc:
            return web.Response(status=400, text=f"not an ExportTraceServiceRequest: {exc}")
        self.exports += 1
        self.span_count += len(spans)
        if self._keep:
            self.bodies.append(body)
            self.spans.extend(spans)
        self._arrived.set()
        answer = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=answer, content_type=PROTOBUF)

    async def _stats(self, _: web.Request) -> web.Response:
        return web.json_response({"exports": self.exports, "spans": self.span_count})


async def _serve(port: int) -> None:
    collector = Collector(keep=False)
    await collector.start(port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening on {collector.url}", flush=True)
    await stop.wait()
    await collector.stop()


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1])))
