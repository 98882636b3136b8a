"""The reverse-proxy mechanics: headers, the upstream session, streaming bodies both ways.

Hop-by-hop headers are removed in both directions as RFC 9110 §7.6.1 says, together with every
header the ``Connection`` header names; ``Host`` is set to the upstream's; everything else passes
through unchanged, ``Authorization`` included. Bodies are never decompressed or re-encoded on their
way through: the session runs with ``auto_decompress=False`` and adds no headers of its own.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Final

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config import Settings
from proxy.errors import RefusalError, UpstreamError

# RFC 9110 §7.6.1, plus the proxy-only credentials and the legacy Proxy-Connection.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "proxy-connection",
        "keep-alive",
        "te",
        "transfer-encoding",
        "upgrade",
        "trailer",
        "proxy-authenticate",
        "proxy-authorization",
    }
)
# Not hop-by-hop, but the proxy owns them: Host is the upstream's, Expect is answered locally.
_REQUEST_OWNED: Final = frozenset({"host", "expect"})
# aiohttp would otherwise add these to every upstream request.
_NO_AUTO_HEADERS: Final = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


def _connection_tokens(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    values = headers.getall("Connection", ())
    if not values:
        return frozenset()
    return frozenset(t.strip().lower() for v in values for t in v.split(",") if t.strip())


def request_headers(
    incoming: CIMultiDictProxy[str], request_id: str | None
) -> list[tuple[str, str]]:
    """The headers to send upstream; ``request_id`` is added as ``client-request-id`` if given."""
    dropped = HOP_BY_HOP | _REQUEST_OWNED | _connection_tokens(incoming)
    out = [(k, v) for k, v in incoming.items() if k.lower() not in dropped]
    if request_id is not None:
        out.append(("client-request-id", request_id))
    return out


def response_headers(incoming: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The upstream's response headers as the caller should see them."""
    dropped = HOP_BY_HOP | _connection_tokens(incoming)
    return CIMultiDict((k, v) for k, v in incoming.items() if k.lower() not in dropped)


def tls_context(settings: Settings) -> ssl.SSLContext | bool:
    """Verified TLS by default, with an optional custom CA bundle; ``False`` only when asked."""
    if not settings.tls.verify:
        return False
    context = ssl.create_default_context(cafile=settings.tls.ca_bundle)
    return context


def make_session(settings: Settings) -> aiohttp.ClientSession:
    """One pooled session to the upstream origin for the life of the process."""
    connector = aiohttp.TCPConnector(
        limit=settings.pool.max_connections,
        limit_per_host=0,
        keepalive_timeout=settings.pool.keepalive,
        ssl=tls_context(settings),
        ttl_dns_cache=60,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(
            total=None,
            sock_connect=settings.timeouts.connect,
            sock_read=settings.timeouts.read,
        ),
        auto_decompress=False,
        skip_auto_headers=_NO_AUTO_HEADERS,
        cookie_jar=aiohttp.DummyCookieJar(),  # never carry one caller's cookies to another
        max_field_size=settings.limits.max_header_size,
        read_bufsize=2**16,
    )


async def limited_body(
    stream: aiohttp.StreamReader, max_body: int, on_chunk: BodyCounter
) -> AsyncIterator[bytes]:
    """A request body streamed upstream, refused once it passes ``max_body`` bytes."""
    async for chunk in stream.iter_any():
        on_chunk.count += len(chunk)
        if on_chunk.count > max_body:
            raise RefusalError(
                413, "PayloadTooLarge", f"the request body is over this proxy's limit of {max_body}"
            )
        yield chunk


class BodyCounter:
    """How many request-body bytes went upstream."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


def upstream_error(exc: BaseException) -> UpstreamError:
    """The proxy's answer for an upstream that failed before its response began."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamError(
            504, "GatewayTimeout", "timed out connecting to the upstream", "timeout"
        )
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamError(
            504, "GatewayTimeout", "the upstream did not answer in time", "timeout"
        )
    if isinstance(exc, aiohttp.ClientSSLError):
        return UpstreamError(502, "BadGateway", "TLS with the upstream failed", "tls")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError(502, "BadGateway", "the upstream could not be reached", "connect")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError | ConnectionError):
        return UpstreamError(
            502, "BadGateway", "the upstream closed the connection before answering", "reset"
        )
    return UpstreamError(502, "BadGateway", "the upstream sent an invalid response", "other")


def method_has_body(headers: CIMultiDictProxy[str]) -> bool:
    """Whether the request declares a body (a length above zero, or any transfer coding)."""
    length = headers.get("Content-Length")
    if length is not None:
        return length.strip() != "0"
    return "Transfer-Encoding" in headers
