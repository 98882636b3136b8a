"""Paging links inside gzip and deflate bodies: streaming, bounded, and honest about broken ones."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable

import orjson
import pytest
from multidict import CIMultiDict

from proxy import pages
from proxy.codings import STEP, CodingError, Recoder
from proxy.links import Links

UPSTREAM = "https://api.security.microsoft.com"
CALLER = "http://127.0.0.1:8080"
LINKS = Links(UPSTREAM)
PAGE = orjson.dumps(
    {"value": [{"id": str(n)} for n in range(500)], "@odata.nextLink": f"{UPSTREAM}/api/m?$skip=5"}
)
EXPECTED = LINKS.rewrite(PAGE, CALLER)[0]


def _recoder(coding: str) -> Recoder:
    rewriter = LINKS.rewriter(CALLER)
    return Recoder(coding, rewriter.feed, rewriter.flush)


def _through(recoder: Recoder, body: bytes, size: int) -> bytes:
    out = [p for i in range(0, len(body), size) for p in recoder.feed(body[i : i + size])]
    return b"".join(out + list(recoder.finish()))


def _raw_deflate(body: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return compressor.compress(body) + compressor.flush()


def _raw_inflate(body: bytes) -> bytes:
    return zlib.decompress(body, -15)


_CODED: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
    "gzip": (gzip.compress, gzip.decompress),
    "deflate": (zlib.compress, zlib.decompress),
    "raw-deflate": (_raw_deflate, _raw_inflate),
}


@pytest.mark.parametrize("kind", sorted(_CODED))
@pytest.mark.parametrize("size", [1, 7, 100, 65536])
def test_a_coded_page_is_rewritten_in_its_coding(kind: str, size: int) -> None:
    """gzip, zlib deflate and raw deflate: decoded, rewritten and encoded back the same way."""
    encode, decode = _CODED[kind]
    coding = "gzip" if kind == "gzip" else "deflate"
    assert decode(_through(_recoder(coding), encode(PAGE), size)) == EXPECTED


def test_gzip_members_are_all_read() -> None:
    """A body of several gzip members comes out as one member holding all of them."""
    half = len(PAGE) // 2
    body = gzip.compress(PAGE[:half]) + gzip.compress(PAGE[half:])
    assert gzip.decompress(_through(_recoder("gzip"), body, 50)) == EXPECTED


@pytest.mark.parametrize("size", [1, 50, 1 << 20])
def test_zero_padding_after_a_gzip_member_is_ignored(size: int) -> None:
    """Zeros after a gzip member, as gzip(1) and Python's gzip skip them: the page still decodes."""
    half = len(PAGE) // 2
    body = gzip.compress(PAGE[:half]) + b"\0" * 3 + gzip.compress(PAGE[half:]) + b"\0" * 512
    assert gzip.decompress(_through(_recoder("gzip"), body, size)) == EXPECTED


def test_a_gzip_bomb_expands_one_step_at_a_time() -> None:
    """Gigabyte-ratio input: each step decodes at most STEP bytes and yields small pieces."""
    bomb = gzip.compress(b"\0" * (64 * STEP), compresslevel=9)
    recoder = _recoder("gzip")
    seen = []
    for piece in recoder.feed(bomb):
        seen.append(len(piece))
        assert recoder.decoded <= STEP * (len(seen) + 64)
    seen.extend(len(p) for p in recoder.finish())
    assert recoder.decoded == 64 * STEP
    assert max(seen) <= STEP


def test_a_body_that_is_not_gzip_passes_unchanged() -> None:
    """Bytes labelled gzip that do not decode from the start are sent as they came."""
    recoder = _recoder("gzip")
    assert _through(recoder, PAGE, 1000) == PAGE
    assert recoder.passed


def test_a_body_that_breaks_mid_way_raises() -> None:
    """Once re-encoded bytes went out, a broken stream is an error, never a quiet end."""
    body = gzip.compress(bytes(range(256)) * 4096, compresslevel=0)
    broken = body[: len(body) // 2] + b"\xff" * 64 + body[len(body) // 2 :]
    with pytest.raises(CodingError):
        _through(_recoder("gzip"), broken, 8192)


def test_a_truncated_stream_raises() -> None:
    """A gzip body that stops before its end is not passed on as whole."""
    body = gzip.compress(PAGE)
    with pytest.raises(CodingError):
        _through(_recoder("gzip"), body[:-10], 64)


@pytest.mark.parametrize(
    ("headers", "status", "method", "rewritten", "note"),
    [
        ({"Content-Type": "application/json"}, 200, "GET", True, ""),
        ({"Content-Type": "application/problem+json; charset=utf-8"}, 200, "GET", True, ""),
        ({"Content-Type": "application/json", "Content-Encoding": "gzip"}, 200, "GET", True, ""),
        ({"Content-Type": "text/plain"}, 200, "GET", False, ""),
        ({"Content-Type": "application/json"}, 404, "GET", False, ""),
        ({"Content-Type": "application/json"}, 200, "HEAD", False, ""),
        ({"Content-Type": "application/json"}, 204, "GET", False, ""),
        (
            {"Content-Type": "application/json", "Content-Encoding": "br"},
            200,
            "GET",
            False,
            "paging links not rewritten: Content-Encoding br",
        ),
        (
            {"Content-Type": "application/json", "Content-Encoding": "gzip\"'<>"},
            200,
            "GET",
            False,
            "paging links not rewritten: Content-Encoding unrecognised",
        ),
    ],
)
def test_which_answers_are_rewritten(
    headers: dict[str, str], status: int, method: str, rewritten: bool, note: str
) -> None:
    """2xx JSON bodies in no coding, gzip or deflate; others pass, an unknown coding with a note."""
    pipe, said = pages.plan(LINKS, method, status, CIMultiDict(headers), lambda: CALLER)
    assert (pipe is not None, said) == (rewritten, note)


def test_rewrite_links_off_plans_nothing() -> None:
    """Without a Links (rewrite_links: false) no answer is touched."""
    headers = CIMultiDict({"Content-Type": "application/json"})
    assert pages.plan(None, "GET", 200, headers, lambda: CALLER) == (None, "")


@pytest.mark.parametrize(
    ("method", "status", "content_type", "asked"),
    [
        ("GET", 200, "application/json", 1),
        ("GET", 404, "application/json", 0),
        ("GET", 200, "text/plain", 0),
        ("HEAD", 200, "application/json", 0),
    ],
)
def test_caller_origin_asked_only_for_rewritten_bodies(
    method: str, status: int, content_type: str, asked: int
) -> None:
    """The caller's origin (a system call when Host is unusable) is found only for a rewrite."""
    calls: list[str] = []

    def origin() -> str:
        calls.append(CALLER)
        return CALLER

    headers = CIMultiDict({"Content-Type": content_type})
    pages.plan(LINKS, method, status, headers, origin)
    assert len(calls) == asked
