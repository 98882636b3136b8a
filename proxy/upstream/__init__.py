"""The proxy's HTTP/1.1 client to the one upstream origin.

A lean client made for a proxy: headers go out as the caller's raw bytes (less the hop-by-hop ones
the forward module drops), bodies are streamed in both directions with flow control, and nothing is
decompressed. Its parts, in the order a request meets them:

- ``pool``: keep-alive connections, the wait for a free one, resending (idempotent requests only),
  and the edge where every transport error becomes an ``UpstreamError``;
- ``answers``: the one table from a transport error to status, code, metric kind and message;
- ``connect``: the connect seam (DNS, TCP, TLS) that hands a ``Connection`` its transport;
- ``connection``: the HTTP/1.1 exchange over a transport, parsed by llhttp;
- ``errors``: the transport errors, one small hierarchy.
"""

from proxy.upstream.answers import KINDS, upstream_error
from proxy.upstream.connect import Connector, TCPConnector
from proxy.upstream.connection import Connection
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
    Timeout,
    TLSError,
    TransportError,
    WriteTimeout,
    WrongProtocol,
)
from proxy.upstream.pool import IDEMPOTENT, Pool, Response

__all__ = [
    "IDEMPOTENT",
    "KINDS",
    "CertificateVerifyFailed",
    "ConnectError",
    "ConnectRefused",
    "ConnectTimeout",
    "Connection",
    "Connector",
    "NameResolution",
    "Pool",
    "PoolTimeout",
    "ProtocolError",
    "ReadTimeout",
    "Reset",
    "Response",
    "TCPConnector",
    "TLSError",
    "Timeout",
    "TransportError",
    "WriteTimeout",
    "WrongProtocol",
    "upstream_error",
]
