"""Traces from a real ``defender-proxy run`` process, configured the standard way (``OTEL_*``),
exported over OTLP/HTTP to a stand-in collector, in front of the simulator (whose ``echo`` shows
the headers the upstream received)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.otlp_collector import Collector, ExportedSpan
from tests.procs import Process, start_cli

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
CALLER = {"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "rojo=00f067aa0ba902b7"}
ECHO = {"X-Simulate": "echo"}


class Running:
    """A proxy process in front of the simulator, and the lines it wrote."""

    def __init__(self, process: Process, port: int, listening: dict[str, Any]) -> None:
        self.process = process
        self.port = port
        self.listening = listening

    async def get(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) of a GET through the proxy."""
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{self.port}{path}"
            async with session.get(url, headers=headers) as response:
                return response.status, await response.json()

    async def stop(self) -> list[dict[str, Any]]:
        """SIGTERM, the exit code checked; every request line written."""
        self.process.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(self.process.proc.wait(), 15) == 0
        await self.process.drain_output()
        return [line for line in self.process.lines if line.get("event") == "request"]


@pytest.fixture
async def run(simulator: TestServer, tmp_path: Path) -> AsyncIterator[Any]:
    """Start the proxy CLI with the given environment (process ends with the test)."""
    config = tmp_path / "proxy.yaml"
    config.write_text(
        f"upstream: http://127.0.0.1:{simulator.port}\n"
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nshutdown_grace: 5s\n"
    )
    started: list[Process] = []

    async def start(env: dict[str, str]) -> Running:
        process = await start_cli("run", "--config", str(config), env=env)
        started.append(process)
        line = await process.wait_for("listening")
        return Running(process, int(line["proxy"].rsplit(":", 1)[1]), line)

    yield start
    for process in started:
        await process.stop()


def _exporting(collector: Collector, **more: str) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        **more,
    }


def _sent(echoed: dict[str, Any], name: str) -> list[str]:
    """The values of the header ``name`` as the upstream received them."""
    return [value for key, value in echoed["headers"] if key.lower() == name]


def _by_kind(spans: list[ExportedSpan]) -> dict[str, ExportedSpan]:
    kinds = {span.kind: span for span in spans if span.trace_id == TRACE}
    assert set(kinds) == {"SERVER", "CLIENT"}, spans
    return kinds


async def test_the_callers_trace_id_is_in_the_exported_spans_and_upstream(
    run: Any, collector: Collector
) -> None:
    """With OTEL_TRACES_EXPORTER=otlp the server span continues the caller's trace, and the
    upstream's one traceparent names the exchange's span in that trace; OTEL_SERVICE_NAME names
    the service."""
    proxy: Running = await run(_exporting(collector, OTEL_SERVICE_NAME="proxy-east"))
    assert proxy.listening["tracing"] == "otlp"
    status, echoed = await proxy.get("/api/machines", {**CALLER, **ECHO})
    assert status == 200
    spans = await collector.wait_for(lambda spans: len(spans) >= 2)
    kinds = _by_kind(spans)
    server, client = kinds["SERVER"], kinds["CLIENT"]
    assert (server.trace_id, server.parent_span_id) == (TRACE, PARENT)
    assert client.parent_span_id == server.span_id
    assert _sent(echoed, "traceparent") == [f"00-{TRACE}-{client.span_id}-01"]
    assert _sent(echoed, "tracestate") == [CALLER["tracestate"]]
    assert server.resource["service.name"] == "proxy-east"
    (line,) = await proxy.stop()
    assert (line["trace_id"], line["span_id"]) == (TRACE, server.span_id)


async def test_spans_still_queued_are_exported_when_the_proxy_stops(
    run: Any, collector: Collector
) -> None:
    """A batch not yet due (a 10-minute schedule) is exported during the stop, before exit."""
    proxy: Running = await run(_exporting(collector, OTEL_BSP_SCHEDULE_DELAY="600000"))
    status, _ = await proxy.get("/api/machines", {**CALLER, **ECHO})
    assert status == 200
    await asyncio.sleep(0.3)
    assert collector.spans == []
    await proxy.stop()
    server = _by_kind(collector.spans)["SERVER"]
    assert server.resource["service.name"] == "defender-proxy"


async def test_a_sampler_that_records_nothing_still_propagates_the_trace(
    run: Any, collector: Collector
) -> None:
    """OTEL_TRACES_SAMPLER=always_off: nothing is exported, yet the upstream's traceparent keeps
    the caller's trace id, under the proxy's own (unrecorded) span, flagged not sampled."""
    proxy: Running = await run(_exporting(collector, OTEL_TRACES_SAMPLER="always_off"))
    status, echoed = await proxy.get("/api/machines", {**CALLER, **ECHO})
    assert status == 200
    (sent,) = _sent(echoed, "traceparent")
    version, trace_id, span_id, flags = sent.split("-")
    assert (version, trace_id) == ("00", TRACE)
    assert span_id != PARENT
    assert int(flags, 16) & 1 == 0
    (line,) = await proxy.stop()
    assert line["trace_id"] == TRACE
    assert (collector.exports, collector.spans) == (0, [])


async def test_without_otel_settings_the_callers_trace_headers_pass_unchanged(run: Any) -> None:
    """No OTEL_* variable: tracing is off, the caller's traceparent and tracestate reach the
    upstream as sent (once each), and the log line has no trace ids."""
    proxy: Running = await run({})
    assert proxy.listening["tracing"] == "off"
    status, echoed = await proxy.get("/api/machines", {**CALLER, **ECHO})
    assert status == 200
    assert _sent(echoed, "traceparent") == [CALLER["traceparent"]]
    assert _sent(echoed, "tracestate") == [CALLER["tracestate"]]
    (line,) = await proxy.stop()
    assert "trace_id" not in line
    assert "span_id" not in line


async def test_an_otlp_protocol_not_shipped_leaves_tracing_off_with_a_warning(
    run: Any, collector: Collector
) -> None:
    """OTEL_EXPORTER_OTLP_PROTOCOL=grpc: a warning at start says only http/protobuf is shipped,
    and tracing stays off (the caller's traceparent passes unchanged)."""
    proxy: Running = await run(_exporting(collector, OTEL_EXPORTER_OTLP_PROTOCOL="grpc"))
    assert proxy.listening["tracing"] == "off"
    warning = await proxy.process.wait_for("tracing setting ignored")
    assert warning["level"] == "warning"
    assert "grpc" in warning["problem"]
    assert "http/protobuf" in warning["problem"]
    status, echoed = await proxy.get("/api/machines", {**CALLER, **ECHO})
    assert status == 200
    assert _sent(echoed, "traceparent") == [CALLER["traceparent"]]
    await proxy.stop()
    assert collector.exports == 0
