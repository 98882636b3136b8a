"""The reverse-proxy mechanics: headers, the upstream session, streaming bodies both ways.

Hop-by-hop headers are removed in both directions as RFC 9110 §7.6.1 says, together with every
header the ``Connection`` header names; ``Host`` is set to the upstream's; everything else passes
through unchanged, ``Authorization`` included. Bodies are never decompressed or re-encoded on their
way through, and the upstream client adds no headers of its own.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence
from typing import Final

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.config import Settings
from proxy.errors import CallerGoneError, RefusalError
from proxy.upstream import Pool

# RFC 9110 §7.6.1, plus the proxy-only credentials and the legacy Proxy-Connection.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"trailer",
        b"proxy-authenticate",
        b"proxy-authorization",
    }
)
# Not hop-by-hop, but the proxy owns them: Host is the upstream's, Expect is answered locally,
# and client-request-id is re-added below when the proxy chose the id.
_REQUEST_OWNED: Final = frozenset({b"host", b"expect"})

_PROXY_PREFIX: Final = b"x-defender-proxy-"

RawHeaders = Sequence[tuple[bytes, bytes]]


_REQUEST_DROPPED: Final = HOP_BY_HOP | _REQUEST_OWNED


def _end_to_end(
    raw: RawHeaders, dropped: frozenset[bytes], consumed: bytes | None = None
) -> list[tuple[bytes, bytes]]:
    """The pairs of ``raw`` whose lower-case name is not in ``dropped``, not named by a
    ``Connection`` header, and (if given) does not start with ``consumed``."""
    out: list[tuple[bytes, bytes]] = []
    named: set[bytes] = set()
    for name, value in raw:
        lowered = name.lower()
        if lowered in dropped:
            if lowered == b"connection":
                named.update(t for part in value.split(b",") if (t := part.strip().lower()))
        elif consumed is None or not lowered.startswith(consumed):
            out.append((name, value))
    if named:
        # Headers the Connection header names may come before it: a second pass, rarely made.
        out = [(name, value) for name, value in out if name.lower() not in named]
    return out


def request_headers(raw: RawHeaders, request_id: str | None) -> list[tuple[bytes, bytes]]:
    """The caller's header bytes to send upstream; ``request_id`` added as client-request-id.

    Headers addressed to the proxy itself (``X-Defender-Proxy-*``) are consumed here.
    """
    out = _end_to_end(raw, _REQUEST_DROPPED, _PROXY_PREFIX)
    if request_id is not None:
        out.append((b"client-request-id", request_id.encode("ascii")))
    return out


def response_headers(raw: RawHeaders) -> CIMultiDict[str]:
    """The upstream's response headers as the caller should see them."""
    return CIMultiDict(
        [
            (name.decode("latin-1"), value.decode("utf-8", "replace"))
            for name, value in _end_to_end(raw, HOP_BY_HOP)
        ]
    )


def tls_context(settings: Settings) -> ssl.SSLContext:
    """Verified TLS by default, with an optional custom CA bundle; unverified only when asked."""
    context = ssl.create_default_context(cafile=settings.tls.ca_bundle)
    if not settings.tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def make_pool(settings: Settings) -> Pool:
    """The pool of connections to the upstream origin for the life of the process."""
    return Pool(
        settings.upstream,
        ssl_context=tls_context(settings) if settings.upstream.startswith("https:") else None,
        connect_timeout=settings.timeouts.connect,
        read_timeout=settings.timeouts.read,
        pool_timeout=settings.timeouts.pool,
        max_connections=settings.pool.max_connections,
        keepalive=settings.pool.keepalive,
        # Responses may carry more headers than callers are allowed to send.
        max_header_size=settings.limits.max_header_size * 4,
    )


async def limited_body(
    stream: aiohttp.StreamReader, max_body: int, on_chunk: BodyCounter
) -> AsyncIterator[bytes]:
    """A request body streamed upstream, refused once it passes ``max_body`` bytes."""
    chunks = stream.iter_any()
    while True:
        try:
            chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return
        except (ConnectionError, aiohttp.ClientPayloadError, EOFError) as exc:
            raise CallerGoneError("the caller went away mid-upload") from exc
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


def has_body(headers: CIMultiDictProxy[str]) -> bool:
    """Whether the request declares a body (a length above zero, or any transfer coding)."""
    length = headers.get("Content-Length")
    if length is not None:
        return length.strip() != "0"
    return "Transfer-Encoding" in headers
