"""The ``X-Simulate`` request header: its grammar and its checks.

The header is a ``;``-separated list of directives, ``name`` or ``name=value``; several
``X-Simulate`` headers read as one list. At most one directive chooses the answer (``error``,
``graph-error``, ``hunting-429``, ``cpu-429``, ``body``, ``download``, ``gzip-download``,
``eof-body``, ``echo``, ``reset``, ``reset-headers``, ``reset-body``, ``truncate-chunked``, or
``status`` alone); the
others adjust it (``status``, ``size``, ``chunked``, ``inner``, ``slow``, ``stall-body``,
``retry-after``, ``early-hints``, ``set-header``, ``set-cookie``). Anything unknown, malformed or
contradictory raises ``DirectiveError`` so a typo in a test is a 400, never a silent default answer.

``reset`` answers with a TCP reset before the first byte; ``reset-headers`` sends the status line
and part of the header block first, then resets.

Two of them exercise HTTP/1.1 framing a client must cope with:

- ``eof-body=<size>`` answers ``<size>`` bytes of the download pattern delimited by closing the
  connection, HTTP/1.0 style: no Content-Length, no chunked coding, ``Connection: close``.
- ``early-hints`` sends an interim ``103 Early Hints`` (with ``Link: </x>; rel=preload``) before
  anything else, ``slow`` included, then the final answer on the same connection. HTTP/1.0
  callers never get it (RFC 9110 §15.2), and it does not go with ``reset``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from proxy.codes import ERROR_TABLE
from proxy.units import parse_duration, parse_size

HEADER: Final = "X-Simulate"

#: Directives that choose the answer; a request names at most one.
ANSWERS: Final = frozenset(
    {
        "error",
        "graph-error",
        "hunting-429",
        "cpu-429",
        "body",
        "download",
        "gzip-download",
        "eof-body",
        "echo",
        "reset",
        "reset-headers",
        "reset-body",
        "truncate-chunked",
    }
)
_FLAGS: Final = frozenset(
    {
        "hunting-429",
        "cpu-429",
        "echo",
        "reset",
        "reset-headers",
        "reset-body",
        "truncate-chunked",
        "chunked",
        "early-hints",
    }
)
_VALUED: Final = frozenset(
    {
        "error",
        "graph-error",
        "inner",
        "body",
        "status",
        "size",
        "download",
        "gzip-download",
        "eof-body",
        "slow",
        "stall-body",
        "retry-after",
        "set-header",
    }
)
_REPEATABLE: Final = frozenset({"set-header", "set-cookie"})
#: The answers whose status ``status=`` may set; the others carry their own.
_STATUS_TAKERS: Final = frozenset(
    {"body", "download", "gzip-download", "eof-body", "reset-body", "truncate-chunked"}
)
BODY_KINDS: Final = frozenset(
    {
        "empty",
        "html",
        "truncated",
        "invalid-json",
        "wrong-types",
        "invalid-utf8",
        "oversize",
        "gzip",
        "deflate",
        "br",
        "bad-gzip",
    }
)
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_DEFAULT_COOKIE: Final = "sim-session=6f1c2a; Path=/; Secure; HttpOnly"


class DirectiveError(ValueError):
    """The ``X-Simulate`` header cannot be followed; the message says which directive and why."""


@dataclass(frozen=True, slots=True)
class Directives:
    """A checked ``X-Simulate`` header."""

    #: The directive choosing the answer, ``"status"`` for ``status=`` alone, or ``None``.
    answer: str | None = None
    #: The answer directive's value: the error code, the body kind, the size as written.
    value: str = ""
    #: ``status=``, or the status ``error=`` / ``graph-error=`` comes with.
    status: int | None = None
    #: Bytes: the ``size=`` of ``body=oversize``, or the ``download=`` / ``gzip-download=`` /
    #: ``eof-body=`` size.
    size: int | None = None
    chunked: bool = False
    inner: str | None = None
    slow: float = 0.0
    stall: float = 0.0
    retry_after: str | None = None
    #: Send ``103 Early Hints`` before the answer.
    early_hints: bool = False
    #: Extra response headers, in order: ``set-header`` and ``set-cookie``.
    headers: tuple[tuple[str, str], ...] = ()


def parse(text: str) -> Directives:
    """Read an ``X-Simulate`` header value; raise ``DirectiveError`` on anything doubtful."""
    seen: dict[str, str] = {}
    headers: list[tuple[str, str]] = []
    for item in text.split(";"):
        item = item.strip()
        if not item:
            continue
        name, has_value, value = item.partition("=")
        name, value = name.strip().lower(), value.strip()
        _check_shape(name, has_value == "=", value)
        if name in _REPEATABLE:
            headers.append(_extra_header(name, value))
            continue
        if name in seen:
            raise DirectiveError(f"X-Simulate directive {name!r} is given twice")
        seen[name] = value
    answers = sorted(ANSWERS & seen.keys())
    if len(answers) > 1:
        raise DirectiveError(f"X-Simulate directives {answers} each choose the answer; give one")
    answer = answers[0] if answers else ("status" if "status" in seen else None)
    _check_companions(answer, seen)
    value = seen.get(answer, "") if answer else ""
    status = _status(seen["status"]) if "status" in seen else None
    if answer in ("error", "graph-error"):
        value, status = _error_status(answer, value)
    if answer == "body" and seen["body"] not in BODY_KINDS:
        raise DirectiveError(
            f"X-Simulate body={seen['body']!r} is not a body kind; one of {sorted(BODY_KINDS)}"
        )
    return Directives(
        answer=answer,
        value=value,
        status=status,
        size=_size("size", seen["size"]) if "size" in seen else _download_size(answer, seen),
        chunked="chunked" in seen,
        inner=seen.get("inner"),
        slow=_duration("slow", seen["slow"]) if "slow" in seen else 0.0,
        stall=_duration("stall-body", seen["stall-body"]) if "stall-body" in seen else 0.0,
        retry_after=seen.get("retry-after"),
        early_hints="early-hints" in seen,
        headers=tuple(headers),
    )


def _check_shape(name: str, has_value: bool, value: str) -> None:
    if name in _FLAGS:
        if has_value:
            raise DirectiveError(f"X-Simulate directive {name!r} takes no value")
    elif name in _VALUED:
        if not value:
            raise DirectiveError(f"X-Simulate directive {name!r} needs a value: {name}=…")
    elif name != "set-cookie":
        raise DirectiveError(f"unknown X-Simulate directive {name!r}")


def _check_companions(answer: str | None, seen: dict[str, str]) -> None:
    # A modifier that the chosen answer ignores is a mistake in the caller's test, not a no-op.
    if "status" in seen and answer not in _STATUS_TAKERS | {"status"}:
        raise DirectiveError(f"X-Simulate status= does not go with {answer}")
    if "size" in seen and not (answer == "body" and seen["body"] == "oversize"):
        raise DirectiveError("X-Simulate size= only goes with body=oversize")
    if "chunked" in seen and answer != "download":
        raise DirectiveError("X-Simulate chunked only goes with download=")
    if "inner" in seen and answer != "graph-error":
        raise DirectiveError("X-Simulate inner= only goes with graph-error=")
    if "stall-body" in seen and answer in ("reset", "reset-headers"):
        raise DirectiveError(f"X-Simulate stall-body does not go with {answer}: there is no body")
    if "early-hints" in seen and answer in ("reset", "reset-headers"):
        raise DirectiveError(
            f"X-Simulate early-hints does not go with {answer}: there is no answer"
        )


def _download_size(answer: str | None, seen: dict[str, str]) -> int | None:
    if answer in ("download", "gzip-download", "eof-body"):
        return _size(answer, seen[answer])
    return None


def _error_status(answer: str, value: str) -> tuple[str, int]:
    code, has_status, status_text = value.partition(":")
    code = code.strip()
    if not code:
        raise DirectiveError(f"X-Simulate {answer}= needs a code")
    if has_status:
        status = _status(status_text, answer)
        if status < 400:
            raise DirectiveError(f"X-Simulate {answer}= needs an error status, got {status}")
        return code, status
    if answer == "error" and code in ERROR_TABLE:
        return code, ERROR_TABLE[code]
    raise DirectiveError(
        f"X-Simulate {answer}={code!r}: give its status as {answer}={code}:<status>"
    )


def _status(text: str, name: str = "status") -> int:
    try:
        status = int(text.strip())
    except ValueError:
        status = 0
    if not 200 <= status <= 599:
        raise DirectiveError(f"X-Simulate {name}= needs a status from 200 to 599, got {text!r}")
    return status


def _size(name: str, text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise DirectiveError(f"X-Simulate {name}=: {exc}") from None


def _duration(name: str, text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise DirectiveError(f"X-Simulate {name}=: {exc}") from None


def _extra_header(name: str, value: str) -> tuple[str, str]:
    if name == "set-cookie":
        return "Set-Cookie", value or _DEFAULT_COOKIE
    header, has_colon, header_value = value.partition(":")
    header = header.strip()
    if not has_colon or not _TOKEN.match(header):
        raise DirectiveError(f"X-Simulate set-header= needs Name:value, got {value!r}")
    return header, header_value.strip()
