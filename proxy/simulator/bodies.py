"""What the simulator puts in its answers: the API's envelopes, their messages and the broken bodies.

Every error envelope gets a fresh tracking id, as the real API does, so a test can tell two answers
apart and check the proxy logged the right one. Large bodies are never built whole: they are
generators over one preallocated chunk, so a 1 GiB download costs 64 KiB of memory.
"""

from __future__ import annotations

import gzip
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Final

import brotli
import orjson

from proxy.codes import ERROR_TABLE
from proxy.errors import envelope

CHUNK_SIZE: Final = 64 * 1024
#: A byte pattern rather than zeros so a test that hashes a download notices reordered chunks
#: within the pattern's period, and a compressing hop cannot shrink it to nothing.
_CHUNK: Final = bytes(range(256)) * (CHUNK_SIZE // 256)
_PADDING: Final = b"x" * CHUNK_SIZE

DEFAULT_BODY: Final = orjson.dumps(
    {"@odata.context": "https://api.security.microsoft.com/api/$metadata#Machines", "value": []}
)

HUNTING_MESSAGE: Final = "API calls quota exceeded! maximum allowed 45 per 00:01:00"
CPU_MESSAGE: Final = (
    "You have exceeded processing resources allocated to this tenant. "
    "You can run queries again in 00:00:30."
)

#: Messages worded like the API's (from its docs and users' reports); never branch on them.
_MESSAGES: Final[dict[str, str]] = {
    "BadRequest": "The request is invalid. Check the request URL, parameters and body.",
    "ODataError": "Invalid filter clause: Could not find a property named 'healthstatus'.",
    "InvalidInput": "The input value is invalid.",
    "InvalidRequestBody": "Request body is incorrect.",
    "InvalidHashValue": "Hash value '8ab3f2' is invalid.",
    "InvalidDomainName": "Domain name 'contoso..com' is invalid.",
    "InvalidIpAddress": "IP address '300.1.1.1' is invalid.",
    "InvalidUrl": "URL 'htp:/contoso.com' is invalid.",
    "MaximumBatchSizeExceeded": "Maximum batch size exceeded. Received: 501, allowed: 500.",
    "MissingRequiredParameter": "Parameter 'Comment' is missing.",
    "OsPlatformNotSupported": "OS platform 'macOS' is not supported for this action.",
    "ClientVersionNotSupported": "The client version is not supported for this action.",
    "Unauthorized": "Invalid Authorization payload.",
    "Forbidden": (
        "Missing application roles. API required roles: Machine.Read.All, "
        "Machine.ReadWrite.All. Application roles: Alert.Read.All"
    ),
    "DisabledFeature": "Required feature is not enabled for this tenant.",
    "DisallowedOperation": "The operation is not allowed on this machine.",
    "NotFound": "The requested resource was not found.",
    "ResourceNotFound": "Machine '1e5bc9d7e413ddd7902c2932e418702b84d0cc07' was not found.",
    "TooManyRequests": "API calls quota exceeded! maximum allowed 100 per 00:01:00",
    "InternalServerError": "An error has occurred.",
    "ActiveRequestAlreadyExists": "Action is already in progress",
    "UnknownError": "",
}
_GRAPH_MESSAGES: Final[dict[str, str]] = {
    "TooManyRequests": "Too many requests.",
    "throttledRequest": "Too many requests.",
    "accessDenied": "Access denied.",
    "itemNotFound": "The requested resource was not found.",
    "InvalidAuthenticationToken": "Access token has expired or is not yet valid.",
    "serviceNotAvailable": "The service is temporarily unavailable.",
    "UnknownError": "",
}


def message_for(code: str) -> str:
    """A realistic Defender message for ``code``."""
    return _MESSAGES.get(code, f"{code}.")


def code_for_status(status: int) -> str:
    """The first documented code that comes with ``status``, else ``UnknownError``."""
    return next((code for code, known in ERROR_TABLE.items() if known == status), "UnknownError")


def graph_envelope(
    code: str,
    inner: str | None,
    request_id: str,
    client_request_id: str,
    message: str | None = None,
) -> bytes:
    """The Microsoft Graph error envelope; ``inner`` adds the nested ``innerError.code``; the
    message is ``message``, else one worded like Graph's for ``code``."""
    inner_error: dict[str, object] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        "request-id": request_id,
        "client-request-id": client_request_id,
    }
    if inner is not None:
        inner_error["innerError"] = {"code": inner}
    if message is None:
        message = _GRAPH_MESSAGES.get(code, f"{code}.")
    return orjson.dumps({"error": {"code": code, "message": message, "innerError": inner_error}})


def html_page(status: int) -> bytes:
    """The small error page a gateway in front of the API answers with."""
    title = f"{status} {phrase(status)}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n"
        "<hr><center>Microsoft-Azure-Application-Gateway/v2</center>\r\n"
        "</body>\r\n</html>\r\n"
    ).encode("ascii")


def broken_body(kind: str, status: int, target: str) -> tuple[bytes, str | None]:
    """The bytes of a ``body=`` kind that fits in memory, and its Content-Encoding if any."""
    code = code_for_status(status)
    whole = envelope(code, message_for(code), target)
    match kind:
        case "empty":
            return b"", None
        case "html":
            return html_page(status), None
        case "truncated":
            return whole[: len(whole) // 2], None
        case "invalid-json":
            return b'{"error": {"code": InternalServerError, "message": "An error', None
        case "wrong-types":
            return orjson.dumps({"error": {"code": 42, "message": ["x"]}}), None
        case "invalid-utf8":
            return b'{"error":{"code":"Bad\xff\xfe"}}', None
        case "gzip":
            return gzip.compress(whole), "gzip"
        case "deflate":
            # HTTP's "deflate" is the zlib format (RFC 9110 8.4.1.2), not a raw deflate stream.
            return zlib.compress(whole), "deflate"
        case "br":
            return bytes(brotli.compress(whole)), "br"
        case "bad-gzip":
            return b"\x1f\x8b\x08\x00this is not a gzip stream\x00\xff", "gzip"
    raise ValueError(f"not an in-memory body kind: {kind!r}")


def oversize(size: int, status: int, target: str) -> tuple[int, Iterator[bytes]]:
    """A Defender envelope whose message pads it to ``size`` bytes (or its minimum), streamed."""
    code = code_for_status(status)
    head = b'{"error":{"code":"' + code.encode() + b'","message":"'
    tail = b'","target":"' + target.encode() + b'"}}'
    padding = max(0, size - len(head) - len(tail))

    def chunks() -> Iterator[bytes]:
        yield head
        yield from _repeat(_PADDING, padding)
        yield tail

    return len(head) + padding + len(tail), chunks()


def download(size: int) -> Iterator[bytes]:
    """``size`` bytes of the download pattern, in 64 KiB chunks of one shared buffer."""
    return _repeat(_CHUNK, size)


def gzip_download(size: int) -> Iterator[bytes]:
    """The download pattern gzip-compressed as it goes; ``size`` is the decompressed length."""
    compressor = zlib.compressobj(wbits=31)
    for chunk in download(size):
        if out := compressor.compress(chunk):
            yield out
    yield compressor.flush()


def client_request_id(given: str | None) -> str:
    """Graph echoes the caller's ``client-request-id`` and makes one up when there is none."""
    return given if given else str(uuid.uuid4())


def _repeat(chunk: bytes, total: int) -> Iterator[bytes]:
    full, rest = divmod(total, len(chunk))
    for _ in range(full):
        yield chunk
    if rest:
        yield chunk[:rest]


def phrase(status: int) -> str:
    """The reason phrase of ``status`` for a status line or a page title."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
