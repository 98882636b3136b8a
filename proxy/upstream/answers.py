"""The one table from a transport error to the proxy's answer, applied at the package's edge.

Each row gives the status and Defender code of the envelope, the caller-facing message, and the
``kind`` label of ``defender_proxy_upstream_failures_total``. The kinds are this closed set, so
the metric's cardinality is bounded whatever the upstream does; the detail (an OpenSSL reason, an
address, the phase of a timeout) goes only into the log line, as the error's cause.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from proxy.errors import UpstreamError
from proxy.upstream.errors import (
    CertificateVerifyFailed,
    ConnectError,
    ConnectRefused,
    ConnectTimeout,
    NameResolution,
    PoolTimeout,
    ProtocolError,
    ReadTimeout,
    Reset,
    TLSError,
    TransportError,
    WriteTimeout,
    WrongProtocol,
)


class Answer(NamedTuple):
    """How one kind of transport failure is answered and counted."""

    status: int
    code: str
    kind: str
    message: str


_BAD_GATEWAY: Final = (502, "BadGateway")
_GATEWAY_TIMEOUT: Final = (504, "GatewayTimeout")

ANSWERS: Final[dict[type[TransportError], Answer]] = {
    NameResolution: Answer(*_BAD_GATEWAY, "dns", "the upstream's host name did not resolve"),
    ConnectRefused: Answer(*_BAD_GATEWAY, "refused", "the upstream refused the connection"),
    ConnectError: Answer(*_BAD_GATEWAY, "connect", "the upstream could not be reached"),
    CertificateVerifyFailed: Answer(
        *_BAD_GATEWAY, "tls_verify", "the upstream's TLS certificate was rejected"
    ),
    WrongProtocol: Answer(*_BAD_GATEWAY, "tls_protocol", "the upstream did not answer in TLS"),
    TLSError: Answer(*_BAD_GATEWAY, "tls", "TLS with the upstream failed"),
    PoolTimeout: Answer(
        503, "ServiceUnavailable", "pool_timeout", "no upstream connection came free in time"
    ),
    ConnectTimeout: Answer(
        *_GATEWAY_TIMEOUT, "connect_timeout", "connecting to the upstream timed out"
    ),
    ReadTimeout: Answer(*_GATEWAY_TIMEOUT, "read_timeout", "the upstream did not answer in time"),
    WriteTimeout: Answer(
        *_GATEWAY_TIMEOUT, "write_timeout", "the upstream stopped reading the request"
    ),
    Reset: Answer(*_BAD_GATEWAY, "reset", "the upstream closed the connection before answering"),
    ProtocolError: Answer(*_BAD_GATEWAY, "protocol", "the upstream sent an invalid response"),
    TransportError: Answer(*_BAD_GATEWAY, "other", "the exchange with the upstream failed"),
}

#: Every value the ``kind`` label can take.
KINDS: Final = frozenset(answer.kind for answer in ANSWERS.values())


def answer(error: TransportError) -> Answer:
    """The row for ``error``: its own class's, else its nearest ancestor's."""
    for cls in type(error).__mro__:
        found = ANSWERS.get(cls)
        if found is not None:
            return found
    raise AssertionError(f"{type(error).__name__} is not a TransportError")  # pragma: no cover


def upstream_error(error: TransportError, retry_after: int) -> UpstreamError:
    """The proxy's answer to ``error``; a 503 says to retry after ``retry_after`` seconds."""
    row = answer(error)
    headers = {"Retry-After": str(retry_after)} if row.status == 503 else None
    return UpstreamError(row.status, row.code, row.message, row.kind, str(error), headers)
