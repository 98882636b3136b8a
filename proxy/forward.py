"""The reverse-proxy mechanics: headers, the upstream session, streaming bodies both ways.

Hop-by-hop headers are removed in both directions as RFC 9110 §7.6.1 says, together with every
header the ``Connection`` header names; ``Host`` is set to the upstream's; everything else passes
through unchanged, ``Authorization`` included (but a ``$batch``'s ``Accept-Encoding``: see
``uncompressed``; and, while tracing is on, ``traceparent`` and ``tracestate``: see
``request_headers``). Bodies are never decompressed or re-encoded on their
way through, and the upstream client adds no headers of its own.

The framing of every message is the proxy's own, in both directions: the caller's
``Content-Length`` and ``Transfer-Encoding`` are never copied; the upstream is told the length the
proxy's parser read (or gets the body chunked), and the caller is told the length the upstream's
answer was parsed with (or gets it chunked). So ``Connection: content-length`` cannot strip the
framing, and no header can make the two sides of the proxy read one byte stream differently.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Sequence
from typing import Final

import aiohttp
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict

from proxy import trust
from proxy.config import Settings
from proxy.errors import CallerGoneError, CallerTimeoutError, RefusalError
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
# the framing is derived from what the proxy read, and client-request-id is always the id the
# proxy logs (the caller's when it is sane).
_REQUEST_OWNED: Final = frozenset({b"host", b"expect", b"content-length", b"client-request-id"})
# The answer's length is the one the upstream's answer was parsed with; never copied as sent.
_RESPONSE_DROPPED: Final = HOP_BY_HOP | {b"content-length"}

_PROXY_PREFIX: Final = b"x-defender-proxy-"

RawHeaders = Sequence[tuple[bytes, bytes]]


_REQUEST_DROPPED: Final = HOP_BY_HOP | _REQUEST_OWNED
# W3C Trace Context: a tracing proxy sends its own span as the upstream's parent.
_TRACED_DROPPED: Final = _REQUEST_DROPPED | {b"traceparent", b"tracestate"}


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


def request_headers(
    raw: RawHeaders,
    request_id: str,
    content_length: int | None,
    trace_context: RawHeaders | None = None,
    authorization: str | None = None,
) -> list[tuple[bytes, bytes]]:
    """The caller's header bytes to send upstream, framed by the proxy.

    ``request_id`` goes as the one client-request-id; ``content_length`` is the length of the body
    the proxy read (None: no length is sent; a body without one goes chunked). Headers addressed
    to the proxy itself (``X-Defender-Proxy-*``) are consumed here. ``trace_context``, when
    tracing is on, is the proxy's own ``traceparent`` (and ``tracestate``): it replaces the
    caller's; when tracing is off the caller's pass through like any other header.
    ``authorization`` is the token the proxy minted for a caller that sent none.
    """
    if trace_context is None:
        out = _end_to_end(raw, _REQUEST_DROPPED, _PROXY_PREFIX)
    else:
        out = _end_to_end(raw, _TRACED_DROPPED, _PROXY_PREFIX)
        out.extend(trace_context)
    out.append((b"client-request-id", request_id.encode("ascii")))
    if authorization is not None:
        out.append((b"Authorization", authorization.encode("ascii")))
    if content_length is not None:
        out.append((b"Content-Length", b"%d" % content_length))
    return out


def uncompressed(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` asking for an answer without a content coding (``Accept-Encoding: identity``).

    For a ``$batch`` only: its inner answers (inner 429s among them) must be read on the way
    through, and a compressed answer is never decompressed here. Every client accepts
    ``identity`` unless it says ``identity;q=0``, which no HTTP client library sends.
    """
    kept = [(name, value) for name, value in headers if name.lower() != b"accept-encoding"]
    kept.append((b"Accept-Encoding", b"identity"))
    return kept


def response_headers(raw: RawHeaders) -> CIMultiDict[str]:
    """The upstream's response headers as the caller should see them, without their framing.

    The caller's framing is set by the relay: ``Content-Length`` from ``response_length``, else
    chunked. Headers in the proxy's own namespace (``X-Defender-Proxy-*``) are dropped: a caller
    takes ``X-Defender-Proxy-Error`` for an answer the proxy made and ``X-Defender-Proxy-Hint``
    for the proxy's reading of its body, so an upstream (or whatever sits in front of it) may
    not say either.
    """
    return CIMultiDict(
        [
            (name.decode("latin-1"), value.decode("utf-8", "replace"))
            for name, value in _end_to_end(raw, _RESPONSE_DROPPED, _PROXY_PREFIX)
        ]
    )


def response_length(raw: RawHeaders) -> int | None:
    """The length the upstream's answer was framed with: its Content-Length when that is the
    framing (one value, or one value repeated, and no Transfer-Encoding), else None."""
    lengths: set[bytes] = set()
    for name, value in raw:
        lowered = name.lower()
        if lowered == b"transfer-encoding":
            return None
        if lowered == b"content-length":
            lengths.update(part.strip() for part in value.split(b","))
    if len(lengths) != 1:
        return None
    (length,) = lengths
    return int(length) if length.isdigit() and len(length) <= 18 else None


def tls_context(settings: Settings) -> ssl.SSLContext:
    """Verified TLS by default, against the system's CAs (``proxy.trust``) or a custom CA bundle;
    unverified only when asked."""
    context = trust.verifying(settings.tls.ca_bundle)
    if not settings.tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def make_pool(
    settings: Settings, origin: str | None = None, tls: ssl.SSLContext | None = None
) -> Pool:
    """The pool of connections to ``origin`` (default: ``upstream``) for the life of the process,
    over ``tls`` for an ``https`` origin (default: a context of its own, ``tls_context``)."""
    origin = origin or settings.upstream
    if origin.startswith("https:"):
        tls = tls if tls is not None else tls_context(settings)
    else:
        tls = None
    return Pool(
        origin,
        ssl_context=tls,
        connect_timeout=settings.timeouts.connect,
        read_timeout=settings.timeouts.read,
        pool_timeout=settings.timeouts.pool,
        max_connections=settings.pool.max_connections,
        keepalive=settings.pool.keepalive,
        # Responses may carry more headers than callers are allowed to send.
        max_header_size=settings.limits.max_header_size * 4,
    )


async def limited_body(
    stream: aiohttp.StreamReader, max_body: int, on_chunk: BodyCounter, caller_timeout: float
) -> AsyncIterator[bytes]:
    """A request body streamed upstream, refused once it passes ``max_body`` bytes, or when the
    caller sends nothing more of it for ``caller_timeout`` seconds."""
    chunks = stream.iter_any()
    while True:
        try:
            async with asyncio.timeout(caller_timeout):
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise CallerTimeoutError(
                "RequestTimeout",
                f"no more of the request body came within timeouts.caller ({caller_timeout:g}s)",
            ) from None
        except HttpProcessingError:
            raise RefusalError(
                400, "BadRequest", "the request body's framing is not valid HTTP/1.1"
            ) from None
        except (ConnectionError, aiohttp.ClientPayloadError, EOFError) as exc:
            raise CallerGoneError("the caller went away mid-upload") from exc
        on_chunk.count += len(chunk)
        if on_chunk.count > max_body:
            raise RefusalError(
                413, "PayloadTooLarge", f"the request body is over this proxy's limit of {max_body}"
            )
        yield chunk


async def read_up_to(body: AsyncIterator[bytes], limit: int) -> tuple[list[bytes], bool]:
    """The first chunks of ``body``, until more than ``limit`` bytes came: (chunks, whether that
    was the whole body). ``body`` is left where it stopped, to be read on."""
    parts: list[bytes] = []
    size = 0
    async for chunk in body:
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            return parts, False
    return parts, True


async def replay(
    parts: list[bytes], rest: AsyncIterator[bytes] | None = None
) -> AsyncIterator[bytes]:
    """``parts``, then whatever is left of ``rest``."""
    for part in parts:
        yield part
    if rest is not None:
        async for chunk in rest:
            yield chunk


class BodyCounter:
    """How many request-body bytes went upstream."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0
