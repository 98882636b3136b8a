"""Logging, configured once: structlog, JSON lines to stdout in containers, a console format on a TTY.

The proxy writes one canonical line per request (``event="request"``) and a few lifecycle lines.
Nothing secret reaches a line: keys that name secrets are dropped whatever their value, and free
text that came from outside (upstream messages, exception texts) is scrubbed of bearer tokens,
JWTs and ``password=``-style pairs before it is written.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, Final, TextIO

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

_SECRET_KEYS: Final = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "token", "access_token",
     "password", "secret", "client_secret", "api_key", "apikey"}
)  # fmt: skip
# Free-text fields whose content comes from outside the proxy.
_TEXT_KEYS: Final = ("message", "error", "detail", "reason", "code", "inner_code", "target")
_SECRET_TEXT = re.compile(
    r"(?i)(bearer\s+)[A-Za-z0-9\-._~+/]+=*"
    r"|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"
    r"|((?:password|passwd|pwd|secret|token|client_secret|api[_-]?key|sig)\s*[=:]\s*)[^\s&\"',;]+"
    r"|(://[^:/@\s]*:)[^@/\s]+(@)"
)
REDACTED: Final = "[redacted]"


def _replace(match: re.Match[str]) -> str:
    if match.group(1):
        return match.group(1) + REDACTED
    if match.group(2):
        return match.group(2) + REDACTED
    if match.group(3):
        return match.group(3) + REDACTED + match.group(4)
    return REDACTED


def scrub(text: str) -> str:
    """``text`` with anything that looks like a credential replaced."""
    return _SECRET_TEXT.sub(_replace, text)


def _redact(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    for key in _SECRET_KEYS.intersection(event):
        event[key] = REDACTED
    for key in _TEXT_KEYS:
        value = event.get(key)
        if isinstance(value, str) and value:
            event[key] = scrub(value)
    return event


def configure(log_format: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Set up structlog for the whole process; ``auto`` means console on a TTY, else JSON."""
    out = stream if stream is not None else sys.stdout
    if log_format == "auto":
        log_format = "console" if out.isatty() else "json"
    shared: list[Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: Processor
    factory: Any
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps, default=str)
        buffer = getattr(out, "buffer", None)
        factory = (
            structlog.BytesLoggerFactory(file=buffer)
            if buffer is not None
            else _TextBytesLoggerFactory(out)
        )
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
        factory = structlog.PrintLoggerFactory(file=out)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )


class _TextBytesLogger:
    """Writes rendered bytes to a text stream (tests capture logs in a StringIO)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def msg(self, message: bytes) -> None:
        self._stream.write(message.decode() + "\n")
        self._stream.flush()

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


class _TextBytesLoggerFactory:
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def __call__(self, *args: Any) -> _TextBytesLogger:
        return _TextBytesLogger(self._stream)


def get_logger(name: str) -> Any:
    """A logger for one part of the proxy (``access``, ``lifecycle`` …)."""
    return structlog.get_logger(name)
