"""Naming an upstream error from the first bytes of its body.

``classify`` turns the bounded prefix of an error body (status >= 400) into an ``ErrorInfo``: the
envelope's ``code`` (after ``codes.ALIASES``), its ``message``, the tracking id to quote to Microsoft
(``target``), and for Microsoft Graph the innermost ``innerError.code``. It runs on every error
response, so a small JSON envelope costs one ``orjson.loads`` and a few look-ups; it never raises.

Envelopes understood::

    Defender  {"error": {"code", "message", "target"}}
    Graph     {"error": {"code", "message", "innerError": {"request-id", "code"?, "innerError"?}}}

When the body carries no usable code, ``code`` is a marker instead (``message`` and ``target``
empty). The checks run in this order, the first that applies wins::

    _too_large     the body went on past the cap, or decompressed past it
    _bad_encoding  unknown or more than three stacked Content-Encodings, or corrupt compressed data
    _empty         nothing but whitespace
    _bad_utf8      not UTF-8 (a body cut inside a character whose prefix is cut JSON: _truncated)
    _html          Content-Type text/html, or the first non-space byte is "<" (gateways, sign-ins)
    _truncated     a JSON object or array that stops early, e.g. ``{"error": {"code": "Bad``
    _not_json      any other text (plain-text gateway answers, garbage), or an unexpected failure
    _wrong_types   valid JSON, but not an envelope with a valid string code and string fields

A valid code is 1 to 64 printable characters without spaces, and not itself a marker. Compressed
bodies (gzip, deflate with or without the zlib wrapper, br, also stacked as in ``gzip, br``) are
decompressed for parsing only, never past ``cap`` bytes, so a zip bomb costs at most about
``cap`` of memory. A compressed stream that stops early is classified on what it decompressed to.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Final

import brotli
import orjson

from proxy.codes import ALIASES

EMPTY: Final = "_empty"
HTML: Final = "_html"
NOT_JSON: Final = "_not_json"
TRUNCATED: Final = "_truncated"
WRONG_TYPES: Final = "_wrong_types"
BAD_UTF8: Final = "_bad_utf8"
TOO_LARGE: Final = "_too_large"
BAD_ENCODING: Final = "_bad_encoding"
MARKERS: Final[frozenset[str]] = frozenset(
    {EMPTY, HTML, NOT_JSON, TRUNCATED, WRONG_TYPES, BAD_UTF8, TOO_LARGE, BAD_ENCODING}
)

CODE_MAX: Final = 64
MESSAGE_MAX: Final = 256
TARGET_MAX: Final = 128

_BOM: Final = b"\xef\xbb\xbf"
_HTML_TYPES: Final = frozenset({"text/html", "application/xhtml+xml"})
_JSON_SPACE: Final = " \t\r\n"
# Unicode category Cc: C0, DEL and C1. They would forge or break log lines.
_CONTROL: Final[dict[int, None]] = dict.fromkeys([*range(0x20), *range(0x7F, 0xA0)])
_GZIP: Final = 16 + zlib.MAX_WBITS
_ZLIB: Final = zlib.MAX_WBITS
_RAW: Final = -zlib.MAX_WBITS
_GZIP_MAGIC: Final = b"\x1f\x8b"
# Nobody stacks more; each layer costs up to `cap` of work, so the count must stay bounded.
_MAX_LAYERS: Final = 3
_BROTLI_STEP: Final = 1 << 16
_BROTLI_SLICE: Final = 16


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """What an error body says: its code (or a marker), message, tracking id and Graph inner code."""

    code: str
    message: str = ""
    target: str = ""
    inner_code: str = ""


_MARK: Final = {marker: ErrorInfo(marker) for marker in MARKERS}


class _TooLargeError(Exception):
    """Decompression went past the cap."""


class _EncodingError(Exception):
    """The Content-Encoding is unknown or the compressed data is corrupt."""


def _brotli_limits_output() -> bool:
    # Brotli >= 1.2 can bound one call's output; older releases can only be fed small slices.
    try:
        brotli.Decompressor().process(b"", output_buffer_limit=1)
    except TypeError:
        return False
    return True


_BROTLI_LIMITS_OUTPUT: bool = _brotli_limits_output()


def classify(
    body: bytes,
    *,
    complete: bool = True,
    content_encoding: str | None = None,
    content_type: str | None = None,
    cap: int = 1 << 20,
) -> ErrorInfo:
    """Name the error in ``body``, the first (at most ``cap``) bytes of an upstream error body."""
    try:
        return _classify(body, complete, content_encoding, content_type, cap)
    except Exception:
        # The hot path must never fail a response over a body it cannot read.
        return _MARK[NOT_JSON]


def _classify(
    body: bytes, complete: bool, encoding: str | None, content_type: str | None, cap: int
) -> ErrorInfo:
    if not complete or len(body) > cap:
        return _MARK[TOO_LARGE]
    if encoding:
        try:
            body = _decode(body, encoding, cap)
        except _TooLargeError:
            return _MARK[TOO_LARGE]
        except (_EncodingError, zlib.error, brotli.error):
            return _MARK[BAD_ENCODING]
    if body.startswith(_BOM):
        body = body[len(_BOM) :]
    head = body.lstrip()[:1]
    if not head:
        return _MARK[EMPTY]
    if head == b"<" or (content_type and _is_html(content_type)):
        try:
            body.decode()
        except UnicodeDecodeError:
            return _MARK[BAD_UTF8]
        return _MARK[HTML]
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _MARK[_not_json(body)]
    return _envelope(doc)


def _is_html(content_type: str) -> bool:
    return content_type.partition(";")[0].strip().lower() in _HTML_TYPES


def _not_json(body: bytes) -> str:
    """The marker for a body orjson refused: bad UTF-8, cut short, or not JSON at all."""
    try:
        text = body.decode()
    except UnicodeDecodeError as exc:
        if exc.end < len(body) or exc.reason != "unexpected end of data":
            return BAD_UTF8
        # Cut inside a multi-byte character: the body was cut short, not mis-encoded.
        return TRUNCATED if _cut_short(body[: exc.start].decode()) else BAD_UTF8
    return TRUNCATED if _cut_short(text) else NOT_JSON


def _cut_short(text: str) -> bool:
    """Whether ``text`` is an object or array that would parse if only more of it had come."""
    text = text.strip(_JSON_SPACE)
    if text[:1] not in ("{", "["):
        return False
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        # orjson reports the position in characters; at the end means it ran out of input.
        return exc.pos >= len(text)
    return False


def _envelope(doc: Any) -> ErrorInfo:
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        return _MARK[WRONG_TYPES]
    code = error.get("code")
    message = error.get("message", "")
    target = error.get("target", "")
    if not (isinstance(code, str) and isinstance(message, str) and isinstance(target, str)):
        return _MARK[WRONG_TYPES]
    code = ALIASES.get(code, code)
    if not _is_code(code):
        return _MARK[WRONG_TYPES]
    if len(message) > MESSAGE_MAX:
        message = message[: MESSAGE_MAX - 1] + "…"
    target = _clean(target)
    inner_code = ""
    inner = _inner(error)
    while inner is not None:
        request_id = inner.get("request-id")
        if not target and isinstance(request_id, str):
            target = _clean(request_id)
        deeper = inner.get("code")
        if isinstance(deeper, str):
            deeper = ALIASES.get(deeper, deeper)
            inner_code = deeper if _is_code(deeper) else inner_code
        inner = _inner(inner)
    return ErrorInfo(code, message, target, inner_code)


def _inner(error: dict[Any, Any]) -> dict[Any, Any] | None:
    inner = error.get("innerError")
    if inner is None:
        inner = error.get("innererror")
    return inner if isinstance(inner, dict) else None


def _is_code(code: str) -> bool:
    # str.isprintable is False for control, format and non-ASCII space characters.
    return (
        0 < len(code) <= CODE_MAX and code.isprintable() and " " not in code and code not in MARKERS
    )


def _clean(target: str) -> str:
    if not target.isprintable():
        target = target.translate(_CONTROL)
    return target[:TARGET_MAX]


def _decode(data: bytes, encoding: str, cap: int) -> bytes:
    """Undo ``Content-Encoding`` (listed in the order applied), never producing more than ``cap``."""
    layers = [
        t for t in (p.strip() for p in encoding.lower().split(",")) if t not in ("", "identity")
    ]
    if len(layers) > _MAX_LAYERS:
        raise _EncodingError(encoding)
    for layer in reversed(layers):
        if not data:
            break  # an empty body is empty whatever the header claims
        if layer in ("gzip", "x-gzip"):
            data = _inflate(data, _GZIP, cap)
        elif layer == "deflate":
            try:
                data = _inflate(data, _ZLIB, cap)
            except zlib.error:
                data = _inflate(data, _RAW, cap)  # raw deflate, as browsers also accept
        elif layer == "br":
            data = _unbrotli(data, cap)
        else:
            raise _EncodingError(layer)
    return data


def _inflate(data: bytes, wbits: int, cap: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        stream = zlib.decompressobj(wbits)
        # size <= cap here, so max_length >= 1 (0 would mean unbounded).
        out = stream.decompress(data, cap + 1 - size)
        size += len(out)
        if size > cap or stream.unconsumed_tail:
            raise _TooLargeError
        parts.append(out)
        data = stream.unused_data
        if not stream.eof:
            if size == 0:
                raise _EncodingError("stream ends before any output")
            break
        # gzip allows several members back to back; anything else after the end is ignored.
        if wbits != _GZIP or not data.startswith(_GZIP_MAGIC):
            break
    return b"".join(parts)


def _unbrotli(data: bytes, cap: int) -> bytes:
    stream = brotli.Decompressor()
    parts: list[bytes] = []
    size = 0
    if _BROTLI_LIMITS_OUTPUT:
        # The limit is soft (the buffer grows in blocks), so ask in steps well under the cap.
        out: bytes = stream.process(data, output_buffer_limit=_BROTLI_STEP)
        while True:
            size += len(out)
            if size > cap:
                raise _TooLargeError
            parts.append(out)
            if not out or stream.is_finished() or stream.can_accept_more_data():
                break
            out = stream.process(b"", output_buffer_limit=_BROTLI_STEP)
    else:
        # Brotli < 1.2: one call's output is unbounded; 16-byte slices keep it to one meta-block
        # or so (measured: 8 to 16 MiB at worst), so the overshoot past cap stays bounded.
        for start in range(0, len(data), _BROTLI_SLICE):
            out = stream.process(data[start : start + _BROTLI_SLICE])
            size += len(out)
            if size > cap:
                raise _TooLargeError
            parts.append(out)
    if size == 0 and not stream.is_finished():
        raise _EncodingError("stream ends before any output")
    return b"".join(parts)
