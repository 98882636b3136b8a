"""Generated HTTP/1.1 requests with odd framing, as raw bytes, each with what RFC 9112 makes of it.

A conversation is a few requests written back to back on one connection (pipelined), then a
closing ``GET /api/machines/end`` with ``Connection: close``. Every request names itself in its
path (``/api/machines/r<i>``) and may carry, in its body, complete requests of its own
(``/api/machines/s<j>``): a proxy that loses a body's framing makes its upstream parse those.

Each request says how a strict reader of RFC 9112 reads it (``Reading``):

- ``PLAIN``: conventional framing; a proxy must forward it with exactly ``body``.
- ``VALID``: valid but unusual (leading zeros, OWS, chunk extensions, trailers, name case, an
  ``Expect``); forwarded with exactly ``body``, or refused.
- ``LENIENT``: the RFC lets a recipient either refuse it or read it one stated way (``5, 5``,
  Content-Length with Transfer-Encoding — the coding wins —, obs-fold, a bare LF line end);
  forwarded with exactly ``body``, or refused.
- ``INVALID``: the RFC says a server must refuse it (a length that is not digits, conflicting
  lengths, whitespace before the colon, chunked not the final coding, broken chunks); refused.

``notes`` names the oddities of a request, for the report of a failing case.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from hypothesis import strategies as st

T = TypeVar("T")
CRLF = b"\r\n"
HOST = b"Host: proxy"


class Reading(enum.IntEnum):
    """How firmly RFC 9112 fixes a request's framing; a request is as weak as its weakest part."""

    INVALID = 0
    LENIENT = 1
    VALID = 2
    PLAIN = 3


@dataclass(frozen=True)
class Sent:
    """One request as the caller wrote it."""

    rid: str
    method: str
    raw: bytes
    reading: Reading
    body: bytes  # what a strict reader takes as the body (meaningless when INVALID)
    headers: tuple[tuple[str, str], ...]  # (lower-case name, value) as a strict reader sees them
    connection: frozenset[str]  # the field names its Connection headers list
    closes: bool  # Connection: close, an HTTP/1.0 request, or an Upgrade: nothing after it is read
    notes: tuple[str, ...]

    @property
    def path(self) -> str:
        return f"/api/machines/{self.rid}"


@dataclass(frozen=True)
class Conversation:
    """The requests of one connection, the closing request last."""

    requests: tuple[Sent, ...]
    writes: tuple[int, ...]  # offsets at which the caller splits its bytes into separate writes

    @property
    def raw(self) -> bytes:
        return b"".join(r.raw for r in self.requests)


END = Sent(
    "end", "GET", b"GET /api/machines/end HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n",
    Reading.PLAIN, b"", (("host", "proxy"), ("connection", "close")), frozenset({"close"}), True,
    (),
)  # fmt: skip


@dataclass
class _Draft:
    """A request being built: header lines (without their line ends) and what they mean."""

    lines: list[bytes]
    eols: list[bytes]
    headers: list[tuple[str, str]]
    reading: Reading
    notes: list[str]

    def add(self, name: bytes, value: bytes, *, strict_value: bytes | None = None) -> None:
        self.lines.append(name + b":" + value)
        self.eols.append(CRLF)
        seen = value if strict_value is None else strict_value
        self.headers.append((name.decode().strip().lower(), seen.decode().strip(" \t")))

    def weaken(self, reading: Reading, note: str) -> None:
        self.reading = min(self.reading, reading)
        self.notes.append(note)


@functools.cache
def _choices(options: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    return st.sampled_from(options)


@functools.cache
def _ints(low: int, high: int) -> st.SearchStrategy[int]:
    return st.integers(low, high)


@functools.cache
def _cut_sets(high: int, most: int) -> st.SearchStrategy[frozenset[int]]:
    return st.frozensets(st.integers(1, max(1, high)), max_size=most)


def _pick(draw: st.DrawFn, options: Sequence[T]) -> T:
    """One of ``options``; strategies are built once per set of options (building them is slow)."""
    picked: T = draw(_choices(tuple(options)))
    return picked


# --- field spellings --------------------------------------------------------------------------

_CL_NAMES = (b"Content-Length", b"content-length", b"CONTENT-LENGTH", b"Content-length")
_TE_NAMES = (b"Transfer-Encoding", b"transfer-encoding", b"TRANSFER-ENCODING")
_CHUNKED = (b"chunked", b"Chunked", b"CHUNKED", b"cHuNkEd")
_CONNECTION_TOKENS = (
    "content-length", "Content-Length", "transfer-encoding", "Transfer-Encoding", "host", "Host",
    "keep-alive", "close", "x-note", "te", "expect", "client-request-id", "authorization",
    "x-absent", "upgrade",
)  # fmt: skip

# Plain framing in 6 of 21 (6 of 14) draws: enough requests get through to reach what follows.
_CL_FORMS = ("plain",) * 6 + (
    "ows", "zeros", "list", "twice", "fold", "plus", "minus", "underscore", "space-inside", "hex",
    "decimal", "empty", "list-differs", "twice-differs", "space-before-colon",
)  # fmt: skip
_TE_FORMS = ("plain",) * 6 + (
    "ows", "gzip-first", "fold", "chunked-twice", "chunked-first", "identity", "twice",
    "space-before-colon",
)  # fmt: skip
_TOKEN_LISTS = st.lists(st.sampled_from(_CONNECTION_TOKENS), min_size=1, max_size=4)
_EXTRAS = st.frozensets(
    st.sampled_from(
        ["note", "auth", "id", "expect", "keep-alive", "te", "upgrade", "fold", "bare-lf"]
    ),
    max_size=4,
)
# Body pieces: plain bytes, and bytes a lost framing would turn into requests or chunk syntax.
_FILLER = st.binary(min_size=1, max_size=24)
_TEXTS = st.sampled_from([b"hello", b'{"x":1}', b"\r\n", b"0\r\n\r\n", b"5\r\nabcde\r\n", b"\n"])


@st.composite
def _smuggled(draw: st.DrawFn) -> bytes:
    """A complete request, to be hidden in a body."""
    sid = draw(_ints(0, 9))
    method = _pick(draw, [b"GET", b"DELETE", b"POST"])
    extra = _pick(draw, [b"", b"Content-Length: 0\r\n", b"Authorization: Bearer stolen\r\n"])
    return b"%s /api/machines/s%d HTTP/1.1\r\nHost: proxy\r\n%s\r\n" % (method, sid, extra)


_BOOL = st.booleans()
_BODY = st.lists(st.one_of(_FILLER, _TEXTS, _smuggled()), max_size=4).map(b"".join)


# --- framing ----------------------------------------------------------------------------------


def _content_length(draw: st.DrawFn, draft: _Draft, body: bytes) -> bytes:
    """Content-Length framing, in one of its spellings; returns the bytes that follow the head."""
    name = _pick(draw, _CL_NAMES)
    if name != b"Content-Length":
        draft.weaken(Reading.VALID, "content-length name case")
    n = len(body)
    form = _pick(draw, _CL_FORMS)
    value = b"%d" % n
    if form == "plain":
        draft.add(name, b" " + value)
    elif form == "ows":
        draft.add(name, b"\t " + value + b"  ")
        draft.weaken(Reading.VALID, "content-length with OWS")
    elif form == "zeros":
        draft.add(name, b" 00" + value)
        draft.weaken(Reading.VALID, "content-length with leading zeros")
    elif form == "list":
        draft.add(name, b" %d, %d" % (n, n))
        draft.weaken(Reading.LENIENT, "content-length list of one value")
    elif form == "twice":
        draft.add(name, b" " + value)
        draft.add(name, b" " + value)
        draft.weaken(Reading.LENIENT, "content-length twice, same value")
    elif form == "fold":
        draft.add(name, b"\r\n " + value, strict_value=b" " + value)
        draft.weaken(Reading.LENIENT, "content-length value on an obs-fold line")
    else:
        bad = {
            "plus": b"+%d" % n,
            "minus": b"-1",
            "underscore": b"%d_0" % n if n else b"0_0",
            "space-inside": b"%d %d" % (n, n),
            "hex": b"0x%x" % n,
            "decimal": b"%d.0" % n,
            "empty": b"",
            "list-differs": b"%d, %d" % (n, n + 1),
        }.get(form)
        if bad is not None:
            draft.add(name, b" " + bad)
        elif form == "twice-differs":
            draft.add(name, b" " + value)
            draft.add(name, b" %d" % (n + 1))
        else:  # space-before-colon
            draft.lines.append(name + b" : " + value)
            draft.eols.append(CRLF)
        draft.weaken(Reading.INVALID, f"content-length {form}")
    return body


def _chunk_size(draw: st.DrawFn, draft: _Draft, size: int) -> bytes:
    text = b"%x" % size
    style = _pick(draw, ["plain"] * 4 + ["upper", "zeros", "huge"])
    if style == "upper":
        if text.upper() != text:
            draft.weaken(Reading.VALID, "chunk size in upper case")
        return text.upper()
    if style == "zeros":
        draft.weaken(Reading.VALID, "chunk size with leading zeros")
        return b"0000" + text
    if style == "huge":
        draft.weaken(Reading.INVALID, "chunk size past 64 bits")
        return b"1" + b"0" * 16 + text
    return text


def _chunk_ext(draw: st.DrawFn, draft: _Draft) -> bytes:
    ext = _pick(draw, [b""] * 5 + [b";a", b";a=b", b';a="q;x\\"y"', b" ;a=b", b";a=b;c"])
    if ext.startswith(b" "):
        # BWS: a sender must not send it, a recipient removes it (RFC 9110 §5.6.3).
        draft.weaken(Reading.LENIENT, "chunk extension after whitespace")
    elif ext:
        draft.weaken(Reading.VALID, "chunk extension")
    return ext


def _chunked(draw: st.DrawFn, draft: _Draft, body: bytes) -> bytes:
    """The body in chunked coding, with the oddities the grammar allows and some it does not."""
    cuts = sorted(draw(_cut_sets(len(body) - 1, 3)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    out = []
    for piece in pieces:
        if not piece:
            continue
        size = _chunk_size(draw, draft, len(piece))
        ext = _chunk_ext(draw, draft)
        end = CRLF
        fault = _pick(draw, [None] * 12 + ["bare-lf-size", "no-crlf", "lf-after-data"])
        line_end = CRLF
        if fault == "bare-lf-size":
            line_end = b"\n"
            draft.weaken(Reading.INVALID, "chunk-size line ends in a bare LF")
        elif fault == "no-crlf":
            end = b""
            draft.weaken(Reading.INVALID, "chunk data without its CRLF")
        elif fault == "lf-after-data":
            end = b"\n"
            draft.weaken(Reading.INVALID, "chunk data ended by a bare LF")
        out.append(size + ext + line_end + piece + end)
    last = b"0" * draw(_ints(1, 3)) + _chunk_ext(draw, draft) + CRLF
    if draw(_ints(0, 5)) == 0:
        last += b"X-Trailer: t\r\n"
        draft.weaken(Reading.VALID, "trailer field")
    return b"".join(out) + last + CRLF


def _transfer_encoding(draw: st.DrawFn, draft: _Draft, body: bytes) -> bytes:
    """Transfer-Encoding framing in one of its spellings; returns the chunked body."""
    name = _pick(draw, _TE_NAMES)
    if name != b"Transfer-Encoding":
        draft.weaken(Reading.VALID, "transfer-encoding name case")
    chunked = _pick(draw, _CHUNKED)
    if chunked != b"chunked":
        draft.weaken(Reading.VALID, "chunked in another case")
    form = _pick(draw, _TE_FORMS)
    if form == "plain":
        draft.add(name, b" " + chunked)
    elif form == "ows":
        draft.add(name, b"\t" + chunked + b" ")
        draft.weaken(Reading.VALID, "transfer-encoding with OWS")
    elif form == "gzip-first":
        draft.add(name, b" gzip, " + chunked)
        draft.weaken(Reading.LENIENT, "transfer-encoding gzip, chunked")
    elif form == "fold":
        # obs-fold: the value continues on a line of its own (RFC 9112 §5.2: refuse or unfold).
        draft.add(name, b"\r\n " + chunked, strict_value=b" " + chunked)
        draft.weaken(Reading.LENIENT, "transfer-encoding value on an obs-fold line")
    else:
        if form == "chunked-twice":
            draft.add(name, b" " + chunked + b", " + chunked)
        elif form == "chunked-first":
            draft.add(name, b" " + chunked + b", gzip")
        elif form == "identity":
            draft.add(name, b" identity")
        elif form == "twice":
            draft.add(name, b" " + chunked)
            draft.add(name, b" " + chunked)
        else:  # space-before-colon
            draft.lines.append(name + b" : " + chunked)
            draft.eols.append(CRLF)
        draft.weaken(Reading.INVALID, f"transfer-encoding {form}")
    return _chunked(draw, draft, body)


# --- a request --------------------------------------------------------------------------------


@st.composite
def request(draw: st.DrawFn, index: int) -> Sent:
    """One request with generated framing, headers and body."""
    method = _pick(draw, ["POST", "POST", "PUT", "PATCH", "GET", "DELETE"])
    rid = f"r{index}"
    version = _pick(draw, [b"1.1"] * 12 + [b"1.0"])
    draft = _Draft([], [], [], Reading.PLAIN, [])
    draft.add(b"Host", b" proxy")
    closes = version == b"1.0"
    if closes:
        draft.weaken(Reading.VALID, "HTTP/1.0")
    body = draw(_BODY) if method in ("POST", "PUT", "PATCH") or draw(_BOOL) else b""
    framing = _pick(draw, ["cl"] * 4 + ["te"] * 4 + ["cl+te", "te+cl", "none"])
    if framing == "none" or (not body and framing == "cl" and draw(_BOOL)):
        body = b""
        payload = b""
    elif framing == "cl":
        payload = _content_length(draw, draft, body)
    elif framing == "te":
        payload = _transfer_encoding(draw, draft, body)
    else:
        # Both: RFC 9112 §6.3 — Transfer-Encoding overrides; a server may refuse instead.
        if framing == "cl+te":
            draft.add(_pick(draw, _CL_NAMES), b" %d" % (len(body) + 7))
        payload = _transfer_encoding(draw, draft, body)
        if framing == "te+cl":
            draft.add(_pick(draw, _CL_NAMES), b" %d" % len(payload))
        draft.weaken(Reading.LENIENT, f"content-length and transfer-encoding ({framing})")
    if version == b"1.0" and any(name == "transfer-encoding" for name, _ in draft.headers):
        draft.weaken(Reading.INVALID, "transfer-encoding in HTTP/1.0")
    connection: set[str] = set()
    for _ in range(draw(_ints(0, 2))):
        tokens = draw(_TOKEN_LISTS)
        if version == b"1.0":
            # An HTTP/1.0 connection ends after each request here: no keep-alive to muddle that.
            tokens = [t for t in tokens if t != "keep-alive"] or ["close"]
        separator = _pick(draw, [b",", b", ", b" ,\t", b",,"])
        draft.add(b"Connection", b" " + separator.join(t.encode() for t in tokens))
        connection.update(t.lower() for t in tokens)
        draft.weaken(Reading.VALID, "connection: " + ",".join(tokens))
    closes = closes or "close" in connection
    extras = draw(_EXTRAS)
    if "note" in extras:
        draft.add(b"X-Note", b" n-" + rid.encode())
    if "auth" in extras:
        draft.add(b"Authorization", b" Bearer tok-" + rid.encode())
    if "id" in extras:
        draft.add(b"client-request-id", b" id-" + rid.encode())
    if "expect" in extras and body:
        draft.add(b"Expect", b" 100-continue")
        draft.weaken(Reading.VALID, "expect 100-continue")
    if "keep-alive" in extras:
        draft.add(b"Keep-Alive", b" timeout=5")
        draft.weaken(Reading.VALID, "keep-alive header")
    if "te" in extras:
        draft.add(b"TE", b" trailers")
        draft.weaken(Reading.VALID, "te header")
    if "upgrade" in extras:
        draft.add(b"Upgrade", b" websocket")
        draft.weaken(Reading.VALID, "upgrade header")
        closes = True  # an upgrade is never honoured; the proxy ends the connection after it
    if "fold" in extras:
        draft.add(b"X-Folded", b" a\r\n\tb", strict_value=b" a b")
        draft.weaken(Reading.LENIENT, "obs-fold in x-folded")
    lines = [b"%s %s HTTP/%s" % (method.encode(), b"/api/machines/" + rid.encode(), version)]
    eols = [CRLF, *draft.eols]
    if "bare-lf" in extras:
        at = draw(_ints(0, len(eols) - 1))
        eols[at] = b"\n"
        draft.weaken(Reading.LENIENT, "a line ended by a bare LF")
    lines += draft.lines
    head = b"".join(line + eol for line, eol in zip(lines, eols, strict=True)) + CRLF
    return Sent(
        rid, method, head + payload, draft.reading, body, tuple(draft.headers),
        frozenset(connection), closes, tuple(draft.notes),
    )  # fmt: skip


_REQUESTS = tuple(request(i) for i in range(3))


@st.composite
def conversations(draw: st.DrawFn) -> Conversation:
    """One to three generated requests, then the closing one, and how the caller splits them."""
    count = draw(_ints(1, 3))
    sent = (*(draw(_REQUESTS[i]) for i in range(count)), END)
    size = sum(len(r.raw) for r in sent)
    writes = tuple(sorted(draw(_cut_sets(size - 1, 2))))
    return Conversation(sent, writes)
