"""Traces, off unless the standard OpenTelemetry environment asks for them: the decision, the start
of the SDK, and its bounded flush when the process stops.

Tracing is on only when ``OTEL_TRACES_EXPORTER`` names ``otlp`` (OTLP over HTTP with protobuf, the
one OTLP transport the image ships) or ``console`` (spans as JSON on stderr, for debugging), and
``OTEL_SDK_DISABLED`` is not ``true``. Unlike the SDK's own default, an unset exporter means off:
a sidecar that starts exporting to ``localhost:4318`` because nobody said otherwise would log a
failed export every few seconds in every deployment without a collector.

``OTEL_EXPORTER_OTLP_PROTOCOL`` (or ``…_TRACES_PROTOCOL``) other than ``http/protobuf`` leaves the
``otlp`` exporter off with a warning at start: gRPC would need grpcio (tens of MiB in every
process), and falling back to HTTP would send protobuf to an endpoint configured for gRPC, which
fails on every batch where a warning at start says it once. Everything else (the endpoint, its
headers, timeout, compression and certificates, the sampler, the service name, resource
attributes, the batch processor's delay and sizes) is read by the SDK itself from its variables.

Nothing of OpenTelemetry is imported here: the SDK, the exporter and protobuf cost several MiB of
every process, so ``start`` imports ``proxy.spans`` (which imports them) only when tracing is on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from proxy.logs import get_logger

if TYPE_CHECKING:
    from proxy.spans import Spans

#: What ``OTEL_TRACES_EXPORTER`` may name here; ``none`` names nothing.
EXPORTERS: Final = ("otlp", "console")
#: The one OTLP protocol shipped (opentelemetry-exporter-otlp-proto-http).
PROTOCOL: Final = "http/protobuf"
#: The longest the stop of the process waits for the spans still queued to be exported.
FLUSH_SECONDS: Final = 5.0
#: A problem the SDK reports (a failed export, a dropped span) is logged at most this often.
QUIET_SECONDS: Final = 60.0


@dataclass(frozen=True, slots=True)
class Plan:
    """What the environment asks of tracing: the exporters to start (none: tracing is off) and
    the warnings to log about what was asked and is not done."""

    exporters: tuple[str, ...]
    warnings: tuple[str, ...] = ()

    @property
    def on(self) -> bool:
        """Whether any exporter is started."""
        return bool(self.exporters)

    def describe(self) -> str:
        """``off``, or the exporters started (``otlp``, ``otlp,console``)."""
        return ",".join(self.exporters) or "off"


def plan(environ: Mapping[str, str]) -> Plan:
    """What ``environ``'s ``OTEL_*`` variables ask of tracing."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Plan(())
    names = [
        name
        for part in environ.get("OTEL_TRACES_EXPORTER", "").split(",")
        if (name := part.strip().lower()) and name != "none"
    ]
    exporters: list[str] = []
    warnings: list[str] = []
    for name in dict.fromkeys(names):
        if name not in EXPORTERS:
            warnings.append(
                f"OTEL_TRACES_EXPORTER names {name!r}, which this proxy does not ship "
                f"(only {' and '.join(EXPORTERS)}): it is ignored"
            )
            continue
        if name == "otlp":
            key, protocol = _protocol(environ)
            if protocol != PROTOCOL:
                warnings.append(
                    f"{key}={protocol!r}: only OTLP over {PROTOCOL} is shipped (no gRPC, no JSON), "
                    f"so the otlp exporter stays off; set {key}={PROTOCOL} and point "
                    "OTEL_EXPORTER_OTLP_ENDPOINT at the collector's HTTP port (4318)"
                )
                continue
        exporters.append(name)
    return Plan(tuple(exporters), tuple(warnings))


def _protocol(environ: Mapping[str, str]) -> tuple[str, str]:
    """The variable that sets the traces' OTLP protocol, and its value (default http/protobuf)."""
    for key in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = environ.get(key, "").strip().lower()
        if value:
            return key, value
    return "OTEL_EXPORTER_OTLP_PROTOCOL", PROTOCOL


def start(
    environ: Mapping[str, str] | None = None, ca_bundle: str | None = None
) -> tuple[Plan, Spans | None]:
    """The plan of the environment (default: the process's) with its warnings logged, and the
    started SDK when tracing is on (else None: nothing of OpenTelemetry is imported). An OTLP
    collector over HTTPS is trusted by ``ca_bundle`` (``tls.ca_bundle``) unless
    ``OTEL_EXPORTER_OTLP_*CERTIFICATE`` names a CA of its own."""
    chosen = plan(os.environ if environ is None else environ)
    log = get_logger("tracing")
    for warning in chosen.warnings:
        log.warning("tracing setting ignored", problem=warning)
    if not chosen.on:
        return chosen, None
    _route_sdk_logging()
    from proxy.spans import Spans

    try:
        return chosen, Spans(chosen.exporters, ca_bundle)
    except Exception as exc:
        # The SDK reads its variables leniently (a bad value is a warning and its default), so
        # this is rare; tracing is not worth a proxy that does not start.
        log.error("tracing not started", error=repr(exc))
        return Plan((), (*chosen.warnings, f"the SDK did not start: {exc!r}")), None


async def stop(spans: Spans, seconds: float = FLUSH_SECONDS) -> bool:
    """Export what is still queued and stop the SDK, waiting ``seconds`` at most; whether it
    finished in time. An export still under way then is abandoned with the process (the SDK's
    threads are daemons), so a collector that does not answer cannot hold a stop back."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[str] = loop.create_future()

    def shut() -> None:
        failure = ""
        try:
            spans.shutdown()
        except Exception as exc:
            failure = repr(exc)
        # The loop may be gone by now, when the wait below gave up.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, done, failure)

    threading.Thread(target=shut, name="trace-flush", daemon=True).start()
    log = get_logger("tracing")
    try:
        failure = await asyncio.wait_for(asyncio.shield(done), seconds)
    except TimeoutError:
        log.warning("spans not exported before the stop", waited_s=seconds)
        return False
    if failure:
        log.warning("spans not exported before the stop", error=failure)
        return False
    return True


def _settle(done: asyncio.Future[str], failure: str) -> None:
    if not done.done():
        done.set_result(failure)


class _ToStructlog(logging.Handler):
    """The SDK's own warnings (a failed export, a full queue) as the proxy's log lines, scrubbed
    like every other line (an exporter's error text may carry the collector's URL).

    The SDK warns once per span it drops from a full queue: under a load the exporter cannot
    follow that would be thousands of lines a second, so each kind of problem is logged at most
    once per ``QUIET_SECONDS``, with the number of repeats held back since. Lines from the SDK's
    export thread are handed to the event loop, which writes every other line.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        super().__init__(logging.WARNING)
        self._loop = loop
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        kind = str(record.msg)
        now = time.monotonic()
        if now - self._last.get(kind, -QUIET_SECONDS) < QUIET_SECONDS:
            self._held[kind] = self._held.get(kind, 0) + 1
            return
        self._last[kind] = now
        fields: dict[str, object] = {"problem": record.getMessage(), "sdk_logger": record.name}
        if held := self._held.pop(kind, 0):
            fields["repeated"] = held
        write = functools.partial(_write, record.levelno >= logging.ERROR, fields)
        loop = self._loop
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if loop is None or here is loop or loop.is_closed():
            write()
            return
        try:
            loop.call_soon_threadsafe(write)
        except RuntimeError:  # the loop closed meanwhile
            write()


def _write(error: bool, fields: dict[str, object]) -> None:
    log = get_logger("tracing")
    (log.error if error else log.warning)("tracing problem", **fields)


def _route_sdk_logging() -> None:
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    sdk = logging.getLogger("opentelemetry")
    for handler in [h for h in sdk.handlers if isinstance(h, _ToStructlog)]:
        sdk.removeHandler(handler)
    sdk.addHandler(_ToStructlog(loop))
    sdk.setLevel(logging.WARNING)
    sdk.propagate = False
