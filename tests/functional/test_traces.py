"""Traces through the proxy in-process: the spans of a request, their parents and attributes as a
collector decodes them, and the ``traceparent`` the upstream (the simulator's echo) receives."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from proxy import tracing
from proxy.spans import Spans
from tests.conftest import LogCapture, Stack
from tests.functional.test_quota import throttle
from tests.otlp_collector import Collector, ExportedSpan
from tests.support.ports import free_port

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
CALLER = {"traceparent": f"00-{TRACE}-{PARENT}-01"}
ECHO = {"X-Simulate": "echo"}

MakeStack = Callable[..., Any]


@pytest.fixture
async def spans(collector: Collector, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Spans]:
    """The SDK as ``OTEL_TRACES_EXPORTER=otlp`` starts it, exporting to the collector at once."""
    for key in [key for key in os.environ if key.startswith("OTEL_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")
    started = Spans(["otlp"])
    yield started
    assert await tracing.stop(started)


def _of(spans: list[ExportedSpan], trace_id: str) -> dict[str, ExportedSpan]:
    """The spans of one trace by kind (one request's: one each)."""
    found = [span for span in spans if span.trace_id == trace_id]
    kinds = {span.kind: span for span in found}
    assert len(kinds) == len(found), found
    return kinds


async def _trace(collector: Collector, trace_id: str, count: int = 3) -> dict[str, ExportedSpan]:
    spans = await collector.wait_for(
        lambda spans: sum(span.trace_id == trace_id for span in spans) >= count
    )
    return _of(spans, trace_id)


def _sent(echoed: dict[str, Any], name: str) -> list[str]:
    """The values of the header ``name`` as the upstream received them."""
    return [value for key, value in echoed["headers"] if key.lower() == name]


async def test_the_callers_trace_runs_through_the_proxy_to_the_upstream(
    make_stack: MakeStack, spans: Spans, collector: Collector
) -> None:
    """The caller's traceparent parents the server span; the upstream exchange is its child; the
    upstream gets the exchange's span in the caller's trace. Admitted at once: no quota span."""
    stack: Stack = await make_stack(quota=True, tracing=spans)
    headers = {**CALLER, **ECHO, "tracestate": "vendor=abc"}
    async with stack.client.get("/api/machines", headers=headers) as response:
        assert response.status == 200
        echoed = await response.json()
    trace = await _trace(collector, TRACE, 2)
    assert set(trace) == {"SERVER", "CLIENT"}
    server, client = trace["SERVER"], trace["CLIENT"]
    assert server.parent_span_id == PARENT
    assert client.parent_span_id == server.span_id
    assert _sent(echoed, "traceparent") == [f"00-{TRACE}-{client.span_id}-01"]
    assert _sent(echoed, "tracestate") == ["vendor=abc"]
    assert server.name == "GET machines.list"
    assert server.status == "UNSET"
    assert server.resource["service.name"] == "defender-proxy"
    line = stack.logs.lines("request")[-1]
    assert server.attributes == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "url.path": "/api/machines",
        "defender.upstream": "default",
        "defender.request_id": line["request_id"],
        "http.response.status_code": 200,
        "defender.route": "machines.list",
        "defender.source": "upstream",
        "defender.quota.outcome": "admitted",
    }
    assert client.name == "GET"
    assert client.attributes == {
        "http.request.method": "GET",
        "server.address": "127.0.0.1",
        "server.port": stack.upstream.port,
        "url.full": f"http://127.0.0.1:{stack.upstream.port}/api/machines",
        "http.response.status_code": 200,
    }
    assert server.start_ns <= client.start_ns <= client.end_ns <= server.end_ns
    assert (line["trace_id"], line["span_id"]) == (TRACE, server.span_id)


async def test_a_request_without_a_traceparent_starts_a_trace_the_upstream_joins(
    make_stack: MakeStack, spans: Spans, collector: Collector
) -> None:
    """Without a caller's traceparent the server span is a root, and the upstream's traceparent
    names the exchange's span in that new trace."""
    stack: Stack = await make_stack(tracing=spans)
    async with stack.client.get("/api/machines", headers=ECHO) as response:
        echoed = await response.json()
    (sent,) = _sent(echoed, "traceparent")
    _, trace_id, span_id, flags = sent.split("-")
    trace = await _trace(collector, trace_id, 2)
    assert trace["SERVER"].parent_span_id == ""
    assert trace["CLIENT"].span_id == span_id
    assert int(flags, 16) & 1  # sampled (the SDK may also set Trace Context 2's random-id bit)
    assert "defender.quota.outcome" not in trace["SERVER"].attributes


async def test_an_api_error_puts_its_code_and_target_on_the_server_span(
    make_stack: MakeStack, spans: Spans, collector: Collector
) -> None:
    """A 403 in the Defender envelope: its code and target on the server span, which stays unset
    (a 4xx is the caller's); the exchange's client span is an error."""
    stack: Stack = await make_stack(quota=True, tracing=spans)
    headers = {**CALLER, "X-Simulate": "error=Forbidden"}
    async with stack.client.get("/api/machines/1", headers=headers) as response:
        assert response.status == 403
        body = await response.json()
    trace = await _trace(collector, TRACE, 2)
    server, client = trace["SERVER"], trace["CLIENT"]
    assert body["error"]["target"]
    assert server.attributes["defender.error.code"] == body["error"]["code"] == "Forbidden"
    assert server.attributes["defender.error.target"] == body["error"]["target"]
    assert server.attributes["http.response.status_code"] == 403
    assert server.attributes["defender.route"] == "machines.get"
    assert server.status == "UNSET"
    assert client.attributes["http.response.status_code"] == 403
    assert client.attributes["error.type"] == "403"
    assert client.status == "ERROR"


async def test_the_quota_wait_and_a_refusal_show_in_their_spans(
    make_stack: MakeStack, spans: Spans, collector: Collector
) -> None:
    """A request that waited for its slot has a quota span as long as its wait, before its
    exchange; one refused by the quota has a refused quota span, no exchange, and the proxy's 429
    on its server span."""
    stack: Stack = await make_stack(
        quota=True, tracing=spans, throttle=throttle("1/1s", max_wait=5)
    )
    traces = [f"{n:032x}" for n in (1, 2, 3)]
    for trace_id, extra in zip(traces, ({}, {}, {"X-Defender-Proxy-Max-Wait": "0s"}), strict=True):
        headers = {"traceparent": f"00-{trace_id}-{PARENT}-01", **extra}
        async with stack.client.get("/api/machines", headers=headers) as response:
            await response.read()
    assert response.status == 429
    waited = await _trace(collector, traces[1])
    server, quota, client = waited["SERVER"], waited["INTERNAL"], waited["CLIENT"]
    assert quota.name == "quota wait"
    assert quota.parent_span_id == client.parent_span_id == server.span_id
    assert server.start_ns <= quota.start_ns <= quota.end_ns <= client.start_ns
    assert quota.attributes["defender.quota.outcome"] == "waited"
    assert quota.attributes["defender.quota.wait_ms"] > 0
    assert quota.end_ns - quota.start_ns >= quota.attributes["defender.quota.wait_ms"] * 1e6 * 0.9
    assert waited["SERVER"].attributes["defender.quota.outcome"] == "waited"
    refused = await _trace(collector, traces[2], 2)
    assert set(refused) == {"SERVER", "INTERNAL"}
    assert refused["INTERNAL"].attributes["defender.quota.outcome"] == "refused"
    assert refused["INTERNAL"].status == "ERROR"
    answered = refused["SERVER"].attributes
    assert answered["defender.quota.outcome"] == "refused"
    assert (answered["http.response.status_code"], answered["defender.source"]) == (429, "proxy")
    assert answered["defender.error.code"] == "TooManyRequests"
    assert answered["defender.error.target"] == stack.logs.lines("request")[-1]["target"]


async def test_an_unreachable_upstream_fails_both_spans(
    make_stack: MakeStack, spans: Spans, collector: Collector
) -> None:
    """An exchange that got no answer ends as an error of its kind; the proxy's 502 makes the
    server span an error too."""
    closed = free_port()
    stack: Stack = await make_stack(tracing=spans, upstream=f"http://127.0.0.1:{closed}")
    async with stack.client.get("/api/machines", headers=CALLER) as response:
        assert response.status == 502
    trace = await _trace(collector, TRACE, 2)
    server, client = trace["SERVER"], trace["CLIENT"]
    assert (client.status, client.attributes["error.type"]) == ("ERROR", "refused")
    assert "http.response.status_code" not in client.attributes
    assert (server.status, server.attributes["error.type"]) == ("ERROR", "refused")
    assert server.attributes["http.response.status_code"] == 502


async def test_no_credential_or_query_reaches_an_exported_span(
    make_stack: MakeStack, spans: Spans, collector: Collector
) -> None:
    """Secrets in the Authorization and Cookie headers, the query string and the path are in no
    byte the collector receives; the path is there scrubbed, without its query."""
    stack: Stack = await make_stack(tracing=spans)
    secrets = ("Zq81hTokenValue", "Cq77SessionValue", "Kx42QueryKey", "Pw93PathSecret")
    headers = {
        **CALLER,
        "Authorization": f"Bearer {secrets[0]}",
        "Cookie": f"session={secrets[1]}",
        "X-Simulate": "error=Unauthorized",
    }
    path = f"/api/machines/x;sig={secrets[3]}?api_key={secrets[2]}"
    async with stack.client.get(path, headers=headers) as response:
        assert response.status == 401
    trace = await _trace(collector, TRACE, 2)
    exported = b"".join(collector.bodies)
    assert bytes.fromhex(TRACE) in exported  # the search below is over this request's export
    for secret in secrets:
        assert secret.encode() not in exported
    assert trace["SERVER"].attributes["url.path"] == "/api/machines/x;sig=[redacted]"


async def test_failed_exports_are_logged_once_a_minute_not_once_a_batch(
    make_stack: MakeStack,
    collector: Collector,
    captured_logs: LogCapture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The SDK's error for an export the collector refuses becomes one scrubbed log line of the
    proxy's; the same error for the next batch is held back (counted, not written)."""
    for key in [key for key in os.environ if key.startswith("OTEL_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{collector.url}/v1/nowhere")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    chosen, started = tracing.start()
    assert started is not None
    assert chosen.describe() == "otlp"
    try:
        stack: Stack = await make_stack(tracing=started)
        for _ in range(2):
            async with stack.client.get("/api/machines", headers=CALLER) as response:
                assert response.status == 200
            # Exported from a thread: the collector answers on this loop meanwhile.
            await asyncio.to_thread(started.provider.force_flush)
            await asyncio.sleep(0.05)
    finally:
        await tracing.stop(started)
    (line,) = captured_logs.lines("tracing problem")
    assert line["level"] == "error"
    assert "404" in line["problem"]
    assert line["sdk_logger"].startswith("opentelemetry.")
    assert collector.spans == []


@pytest.mark.parametrize("named_by", ["tls.ca_bundle", "OTEL_EXPORTER_OTLP_CERTIFICATE"])
async def test_a_collector_over_https_is_trusted_by_the_ca_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, named_by: str
) -> None:
    """A collector serving HTTPS from a private CA gets the spans when tls.ca_bundle names that CA
    (as every TLS peer of the proxy is trusted); OTEL_EXPORTER_OTLP_CERTIFICATE, when set, wins:
    a wrong bundle beside it changes nothing."""
    ca = trustme.CA()
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(served)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    secure = Collector(tls=served)
    await secure.start()
    for key in [key for key in os.environ if key.startswith("OTEL_")]:
        monkeypatch.delenv(key)
    # requests lets these win over any CA a session is given (psf/requests#3829): the exporter's
    # own certificate setting, tls.ca_bundle included, applies only where they are unset.
    for key in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", secure.url)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "20")
    given = str(bundle)
    if named_by == "OTEL_EXPORTER_OTLP_CERTIFICATE":
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(bundle))
        stranger = tmp_path / "stranger.pem"
        trustme.CA().cert_pem.write_to_path(str(stranger))
        given = str(stranger)
    started = Spans(["otlp"], ca_bundle=given)
    try:
        started.provider.get_tracer("test").start_span("exported").end()
        await secure.wait_for(lambda spans: len(spans) >= 1)
    finally:
        assert await tracing.stop(started)
        await secure.stop()
