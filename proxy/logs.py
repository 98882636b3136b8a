"""Logging, configured once: structlog, JSON lines to stdout in containers, a console format on a TTY.

The format is chosen once, at start; the level may change while the process runs (``set_level``,
on a reload), for every logger at once.

The proxy writes one canonical line per request (``event="request"``) and a few lifecycle lines.
Nothing secret reaches a line, in either format: keys that name secrets are dropped whatever their
value, and every other string (the path, the upstream's message, target and codes, notes, exception
texts and tracebacks, ids) goes through ``scrub`` (``proxy.scrubber``) unless the proxy made it
itself from a closed set (``_OWN_KEYS``: the event name, level, timestamp, route name …).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import sys
import time
import weakref
from typing import Any, BinaryIO, Final, TextIO

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from proxy.scrubber import REDACTED, scrub

__all__ = ["REDACTED", "RequestLog", "configure", "get_logger", "scrub", "set_level"]

# Keys that name secrets: their value is dropped whatever it is.
_SECRET_KEYS: Final = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "token", "access_token",
     "refresh_token", "id_token", "password", "secret", "client_secret", "api_key", "apikey",
     "x-api-key", "session", "sig", "signature"}
)  # fmt: skip
# Fields whose string value the proxy makes itself from a closed set; every other string is scrubbed,
# so a field added later (the caller's request id, a note) is covered without being listed here.
_OWN_KEYS: Final = frozenset(
    {"event", "level", "timestamp", "logger", "logger_name", "route", "source", "quota",
     "auth_cause", "missing_role", "stated_limit", "trace_id", "span_id"}
)  # fmt: skip
_PLAIN_TYPES: Final = frozenset({int, float, bool, type(None)})


def _scrub_any(value: Any) -> Any:
    """A value that is not a plain string or number, scrubbed: containers item by item, else as text."""
    if isinstance(value, str):
        return scrub(value)
    if type(value) in _PLAIN_TYPES:
        return value
    if isinstance(value, dict):
        return {
            scrub(str(k)): REDACTED if str(k).lower() in _SECRET_KEYS else _scrub_any(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub_any(v) for v in value]
    return scrub(str(value))


def _redact(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    if "exc_info" in event:
        # The traceback becomes text here, so that it is scrubbed like the rest of the line.
        event = structlog.processors.format_exc_info(_, __, event)
    for key in _SECRET_KEYS & event.keys():
        event[key] = REDACTED
    for key, value in event.items():
        kind = type(value)
        if kind is str:
            if key not in _OWN_KEYS:
                event[key] = scrub(value)
        elif kind not in _PLAIN_TYPES:
            event[key] = _scrub_any(value)
    return event


class _Clock:
    """ISO 8601 UTC timestamps with microseconds; the part up to the second is made once a second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        stamp = time.time()
        second = int(stamp)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((stamp - second) * 1_000_000):06d}Z"


#: The level of each logging method structlog's bound loggers have.
_METHOD_LEVELS: Final = {
    "debug": logging.DEBUG, "info": logging.INFO, "msg": logging.INFO, "warning": logging.WARNING,
    "warn": logging.WARNING, "error": logging.ERROR, "exception": logging.ERROR,
    "critical": logging.CRITICAL, "fatal": logging.CRITICAL,
}  # fmt: skip


def _below_level(_: WrappedLogger, method_name: str, event: EventDict) -> EventDict:
    """Drop a line below the level now set: the level changes on a reload (``set_level``), and
    loggers made before that keep their wrapper, so the wrapper cannot be where lines are cut."""
    if _METHOD_LEVELS.get(method_name, logging.INFO) < _level:
        raise structlog.DropEvent
    return event


def _json_line(clock: _Clock) -> Processor:
    """Level, timestamp, redaction and rendering in one step: the access line's whole chain."""
    levels = {"warn": "warning", "exception": "error"}
    dumps = orjson.dumps
    below = _METHOD_LEVELS

    def render(logger: WrappedLogger, method_name: str, event: EventDict) -> bytes:
        if below.get(method_name, logging.INFO) < _level:
            raise structlog.DropEvent
        event["level"] = levels.get(method_name, method_name)
        event["timestamp"] = clock.now()
        return dumps(_redact(logger, method_name, event), default=str)

    return render


_level = logging.INFO


def configure(log_format: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Set up structlog for the whole process; ``auto`` means console on a TTY, else JSON."""
    out = stream if stream is not None else sys.stdout
    if log_format == "auto":
        log_format = "console" if out.isatty() else "json"
    processors: list[Processor]
    factory: Any
    if log_format == "json":
        processors = [_json_line(_Clock())]
        factory = _LinesFactory(_Lines(out))
    else:
        processors = [
            _below_level,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            structlog.dev.ConsoleRenderer(colors=out.isatty()),
        ]
        factory = structlog.PrintLoggerFactory(file=out)
    set_level(level)
    structlog.configure(
        processors=processors,
        # Every method passes the wrapper; the first processor cuts by the level of the moment.
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


def set_level(level: str) -> None:
    """Write lines of ``level`` (``debug`` … ``error``) and above from now on, from every logger,
    those made before the call included."""
    global _level
    _level = logging.getLevelNamesMapping()[level.upper()]


class _Lines:
    """Rendered lines to the output stream, in one write per event-loop iteration at most.

    Outside a running loop (start-up, shutdown) a line is written at once. Inside one, the first
    line of an iteration schedules the write (``call_soon``: it runs before the loop next polls
    for I/O) and the lines that follow in the same iteration join it, so a burst of answered
    requests costs one write. What is still queued at exit is written then.
    """

    __slots__ = ("__weakref__", "_loop", "_pending", "_write")

    def __init__(self, out: TextIO) -> None:
        buffer: BinaryIO | None = getattr(out, "buffer", None)
        if buffer is not None:

            def write(data: bytes) -> None:
                buffer.write(data)
                buffer.flush()

        else:  # a text-only stream (tests capture logs in a StringIO)

            def write(data: bytes) -> None:
                out.write(data.decode())
                out.flush()

        self._write = write
        self._pending: list[bytes] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        atexit.register(_flush_at_exit, weakref.ref(self))

    def msg(self, line: bytes) -> None:
        """Queue ``line`` (or write it, outside a running loop)."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None and loop is self._loop:
            self._pending.append(line)
            return
        self.flush()  # lines queued on a loop that stopped before writing them
        if loop is None:
            self._write(line + b"\n")
            return
        self._loop = loop
        self._pending.append(line)
        loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every queued line."""
        self._loop = None
        if self._pending:
            lines, self._pending = self._pending, []
            self._write(b"\n".join(lines) + b"\n")

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def _flush_at_exit(ref: weakref.ref[_Lines]) -> None:
    lines = ref()
    if lines is not None:
        with contextlib.suppress(ValueError, OSError):  # the stream may be closed by now
            lines.flush()


class _LinesFactory:
    def __init__(self, lines: _Lines) -> None:
        self._lines = lines

    def __call__(self, *args: Any) -> _Lines:
        return self._lines


def get_logger(name: str) -> Any:
    """A logger for one part of the proxy (``access``, ``lifecycle`` …)."""
    return structlog.get_logger(name)


class RequestLog:
    """The per-request line, through structlog's configured processors and output.

    A bound logger's method copies its keyword arguments on each of three calls before the
    processors see them; the request line, written once per request, hands its dict over as is.
    Made after ``configure``: it takes the configuration of the moment, as a cached logger does.
    """

    __slots__ = ("_processors", "_sink")

    def __init__(self) -> None:
        config = structlog.get_config()
        self._processors: tuple[Processor, ...] = tuple(config["processors"])
        self._sink: Any = config["logger_factory"]("access")

    def write(self, fields: dict[str, Any]) -> None:
        """Write one ``request`` line with ``fields`` (the dict is consumed)."""
        if _level > logging.INFO:
            return
        event: Any = fields
        event["event"] = "request"
        for processor in self._processors:
            event = processor(self._sink, "info", event)
        self._sink.info(event)
