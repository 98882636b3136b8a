"""Content codings undone and redone around a body transform, streaming, in bounded memory.

The API compresses its answers for every client that asks (requests, httpx and the Graph SDK all
send ``Accept-Encoding: gzip, deflate``), so a paging link is only reachable through the coding.
``Recoder`` decompresses each chunk in steps of at most ``STEP`` bytes, passes every step through
the transform and compresses the result again: memory stays bounded by the step and zlib's own
windows whatever the compression ratio (a gzip bomb expands one step at a time, each step sent on
before the next is made). Only gzip and deflate are handled; ``CODINGS`` lists them.

``deflate`` is the zlib format (RFC 9110 §8.4.1.2), but some servers send raw deflate: the first
two bytes tell which, and the answer keeps the format it came in. A gzip body may hold several
members, with zeros between or after them (skipped, as gzip(1) does); the answer holds one. A body
that does not decode from its first chunk passes through unchanged (``passed``), whatever it was
(nothing of it has been sent re-encoded yet); one that breaks later, or ends mid-stream, raises
``CodingError``: by then part of a re-encoded body has been sent, and the caller must not take
what follows for whole.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from typing import Final

#: The codings ``Recoder`` undoes and redoes.
CODINGS: Final = frozenset({"gzip", "x-gzip", "deflate"})
#: The most decompressed bytes made from one step of input.
STEP: Final = 64 * 1024
_GZIP_WBITS: Final = 31
_ZLIB_WBITS: Final = 15
_RAW_WBITS: Final = -15
_LEVEL: Final = 6

Transform = Callable[[bytes], bytes]


class CodingError(Exception):
    """The coded body broke after part of it was re-encoded and sent."""


def _is_zlib(head: bytes) -> bool:
    """Whether ``head`` starts a zlib stream (RFC 1950 §2.2): deflate method, a valid check."""
    return head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0


class Recoder:
    """Decompress, transform, compress: one coded body fed in chunks."""

    __slots__ = (
        "_coding",
        "_compressor",
        "_decompressor",
        "_finish",
        "_pending",
        "_transform",
        "_wbits",
        "decoded",
        "passed",
        "sent",
        "step",
    )

    def __init__(
        self, coding: str, transform: Transform, finish: Callable[[], bytes], step: int = STEP
    ) -> None:
        self._coding = "gzip" if coding == "x-gzip" else coding
        self._transform = transform
        self._finish = finish
        self._wbits = _GZIP_WBITS if self._coding == "gzip" else 0
        self._decompressor: zlib._Decompress | None = None
        self._compressor: zlib._Compress | None = None
        self._pending = b""
        #: True once the body turned out not to decode: the rest passes unchanged
        self.passed = False
        #: True once re-encoded bytes have been handed out
        self.sent = False
        #: decompressed bytes made so far
        self.decoded = 0
        self.step = step

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """The re-encoded pieces ``chunk`` completes, each made from at most one step."""
        if self.passed:
            if chunk:
                yield chunk
            return
        data = self._pending + chunk if self._pending else chunk
        self._pending = b""
        first = self._decompressor is None
        if first:
            if self._coding == "deflate" and len(data) < 2:
                self._pending = data  # the format is known from the first two bytes
                return
            self._open(data)
        try:
            yield from self._run(data)
        except zlib.error as exc:
            if first and not self.sent:
                # Not the coding it claims, from the start: send it as it came.
                self.passed = True
                yield data
                return
            raise CodingError(f"the {self._coding} body broke mid-way ({exc})") from None

    def finish(self) -> Iterator[bytes]:
        """The last pieces; the coded body has ended."""
        if self.passed:
            return
        if self._pending:  # a one-byte deflate body cannot be whole
            self.passed = True
            yield self._pending
            return
        decompressor = self._decompressor
        if decompressor is None:  # an empty body stays empty
            return
        if not decompressor.eof:
            raise CodingError(f"the {self._coding} body ended before its stream did")
        assert self._compressor is not None
        self.sent = True
        yield self._compressor.compress(self._finish()) + self._compressor.flush()

    def _open(self, head: bytes) -> None:
        if self._coding == "deflate":
            self._wbits = _ZLIB_WBITS if _is_zlib(head) else _RAW_WBITS
        self._decompressor = zlib.decompressobj(self._wbits)
        self._compressor = zlib.compressobj(_LEVEL, zlib.DEFLATED, self._wbits)

    def _run(self, data: bytes) -> Iterator[bytes]:
        decompressor = self._decompressor
        compressor = self._compressor
        assert decompressor is not None
        assert compressor is not None
        while data:
            if decompressor.eof:
                if self._coding != "gzip":
                    raise zlib.error("data after the end of the stream")
                # Zeros may pad a gzip body after any member: gzip(1) and Python's gzip skip them.
                data = data.lstrip(b"\0")
                if not data:
                    return
                # The next gzip member.
                decompressor = self._decompressor = zlib.decompressobj(self._wbits)
            plain = decompressor.decompress(data, self.step)
            data = decompressor.unconsumed_tail
            if decompressor.eof:
                data = decompressor.unused_data
            self.decoded += len(plain)
            piece = compressor.compress(self._transform(plain)) if plain else b""
            if piece:
                self.sent = True
                yield piece
