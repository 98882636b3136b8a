"""The proxy's own answers, in the Defender envelope.

Every response the proxy makes itself (a refused target, an unreachable upstream, a quota refusal)
uses the envelope the Defender API uses, ``{"error": {"code", "message", "target"}}``, with a fresh
target id that also goes into the request's log line, and carries ``PROXY_HEADER`` so a caller can
tell the proxy answered, not the API.

Exceptions raised inside the proxy to end a request early::

    ProxyError                 carries status, code and message of the answer
    ├── RefusalError           the request is not ours to forward (400, 403, 413, 414)
    │   └── CallerTimeoutError the caller stopped sending its request (408)
    └── UpstreamError          the upstream could not be reached or did not answer (502, 503, 504)
"""

from __future__ import annotations

import uuid
from typing import Final

import orjson
from aiohttp import web

#: Set on every response the proxy makes itself; the value is the error code.
PROXY_HEADER: Final = "X-Defender-Proxy-Error"
#: The ``Server`` of the proxy's own answers: no version, where aiohttp would name itself and
#: Python with theirs.
SERVER_NAME: Final = "defender-proxy"


class CallerGoneError(Exception):
    """The caller went away before its request was complete; there is nobody to answer."""


class ProxyError(Exception):
    """A request ends with an answer made by the proxy."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        #: extra response headers (Retry-After on a quota refusal)
        self.headers = headers
        #: the status line's reason phrase, when the standard one would not tell enough: all
        #: that some clients show of a refused CONNECT (ASCII text made by the proxy only)
        self.reason = reason


class RefusalError(ProxyError):
    """The request is refused before anything is sent upstream."""


class TokenUnavailableError(ProxyError):
    """The 503 of a request that needed a token from the proxy and got none (``proxy.tokens``);
    ``token_error`` (``AADSTS7000222``, ``unreachable`` …) goes in its log line."""

    def __init__(self, token_error: str, reason: str, wait: float) -> None:
        self.token_error = token_error
        super().__init__(
            503,
            "ServiceUnavailable",
            f"The proxy could not obtain a token for this request: {reason} ({token_error}). "
            "The proxy's log and defender_proxy_token_requests_total say more.",
            {"Retry-After": str(max(1, round(wait)))},
        )


class CallerTimeoutError(RefusalError):
    """The caller sent no more of its request within ``timeouts.caller``: 408, and the connection
    is closed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(408, code, message)


class QuotaRefusal(ProxyError):  # noqa: N818 - a refusal, not a failure
    """The quota has no slot for the request within its deadline."""


class UpstreamError(ProxyError):
    """The upstream failed before its answer could begin (refused, reset, timed out)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        kind: str,
        cause: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, code, message, headers)
        #: a closed set (``proxy.upstream.answers.KINDS``), used as a metric label
        self.kind = kind
        #: what exactly failed, for the log line (the phase of a timeout, an OpenSSL reason)
        self.cause = cause


def new_target() -> str:
    """A fresh tracking id for an answer the proxy makes itself."""
    return str(uuid.uuid4())


def envelope(code: str, message: str, target: str) -> bytes:
    """The Defender error envelope as JSON bytes."""
    return orjson.dumps({"error": {"code": code, "message": message, "target": target}})


def error_response(
    status: int,
    code: str,
    message: str,
    target: str,
    headers: dict[str, str] | None = None,
    reason: str | None = None,
) -> web.Response:
    """A complete proxy-made error response."""
    response = web.Response(
        status=status,
        reason=reason,
        body=envelope(code, message, target),
        content_type="application/json",
        charset="utf-8",
    )
    response.headers[PROXY_HEADER] = code
    response.headers["Server"] = SERVER_NAME
    if headers:
        response.headers.update(headers)
    return response
