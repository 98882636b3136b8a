"""Tests for proxy.classify: envelopes, markers, encodings, bounds, and never raising."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from typing import Any

import brotli
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import classify as classify_module
from proxy.classify import (
    BAD_ENCODING,
    BAD_UTF8,
    EMPTY,
    HTML,
    MARKERS,
    NOT_JSON,
    TOO_LARGE,
    TRUNCATED,
    WRONG_TYPES,
    ErrorInfo,
    classify,
)
from proxy.codes import ALIASES, ERROR_TABLE

TARGET = "8b2f9bd6-4e4b-4f4e-9a55-0d5f1e1f3c2a"
ENVELOPE = orjson.dumps(
    {"error": {"code": "Forbidden", "message": "Missing application roles.", "target": TARGET}}
)
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
GRAPH_INNER = {
    "date": "2024-05-02T10:11:12",
    "request-id": "f1a2b3c4-0000-1111-2222-333344445555",
    "client-request-id": "c1c1c1c1-0000-1111-2222-333344445555",
}


def envelope(**error: Any) -> bytes:
    return orjson.dumps({"error": error})


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.fixture(scope="module")
def zeros_50mib() -> bytes:
    return bytes(50 << 20)


# --- envelopes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(ERROR_TABLE))
def test_defender_envelope_of_each_documented_code(code: str) -> None:
    """Every code of the documented table comes back with its message and target."""
    body = envelope(code=code, message=f"{code} happened.", target=TARGET)
    assert classify(body) == ErrorInfo(code, f"{code} happened.", TARGET, "")


def test_hunting_429_is_too_many_requests() -> None:
    """The hunting body's code "429" is read as TooManyRequests, message kept."""
    message = "API calls quota exceeded! maximum allowed 45 per 00:01:00"
    body = envelope(code="429", message=message, target=TARGET)
    assert classify(body, content_type="application/json; charset=utf-8") == ErrorInfo(
        "TooManyRequests", message, TARGET
    )


def test_non_guid_target_kept_exactly() -> None:
    """An observed non-GUID target is stored as the opaque string it is."""
    body = envelope(code="InvalidInput", message="x", target="|a3a2c86d-4d801fec358d26ce.1.")
    assert classify(body).target == "|a3a2c86d-4d801fec358d26ce.1."


def test_missing_message_and_target_are_empty() -> None:
    """An envelope with only a code gives empty message and target."""
    assert classify(b'{"error":{"code":"NotFound"}}') == ErrorInfo("NotFound")


def test_surrounding_whitespace_and_bom_are_ignored() -> None:
    """A UTF-8 byte order mark and surrounding whitespace do not hide the envelope."""
    assert classify(b"\xef\xbb\xbf \r\n" + ENVELOPE + b"\n").code == "Forbidden"


@pytest.mark.parametrize("key", ["innerError", "innererror"])
def test_graph_nested_inner_error(key: str) -> None:
    """Graph: target is the outer request-id, inner_code the innermost code, either spelling."""
    innermost = {"code": "throttledRequest"}
    middle = {"code": "activityLimitReached", key: innermost}
    body = envelope(
        code="TooManyRequests", message="Too many requests.", **{key: {**GRAPH_INNER, key: middle}}
    )
    assert classify(body) == ErrorInfo(
        "TooManyRequests", "Too many requests.", GRAPH_INNER["request-id"], "throttledRequest"
    )


def test_graph_request_id_found_below_the_first_level() -> None:
    """Graph: when the first innerError lacks request-id, a deeper one supplies the target."""
    body = envelope(code="generalException", innerError={"innerError": {"request-id": "r-1"}})
    assert classify(body) == ErrorInfo("generalException", "", "r-1", "")


def test_graph_500_unknown_error_with_empty_message() -> None:
    """Graph hunting's 500 with code UnknownError and an empty message is read as such."""
    body = envelope(code="UnknownError", message="", innerError=GRAPH_INNER)
    assert classify(body) == ErrorInfo("UnknownError", "", GRAPH_INNER["request-id"], "")


def test_defender_target_wins_over_inner_error() -> None:
    """A Defender target takes precedence over innerError's request-id."""
    body = envelope(code="BadRequest", message="m", target=TARGET, innerError=GRAPH_INNER)
    assert classify(body).target == TARGET


def test_invalid_inner_code_is_dropped() -> None:
    """An inner code that is not a valid code leaves inner_code empty, the outer code intact."""
    body = envelope(code="BadRequest", innerError={"code": "has a space", "request-id": 7})
    assert classify(body) == ErrorInfo("BadRequest")


# --- bounds ---------------------------------------------------------------------------------------


def test_message_cut_at_256_with_ellipsis() -> None:
    """A long message is cut to 256 characters, the last being an ellipsis."""
    message = classify(envelope(code="BadRequest", message="é" * 1000)).message
    assert message == "é" * 255 + "…"


def test_message_of_exactly_256_kept_whole() -> None:
    """A message of exactly 256 characters is not cut."""
    assert classify(envelope(code="BadRequest", message="m" * 256)).message == "m" * 256


def test_control_characters_stripped_from_target() -> None:
    """C0, DEL and C1 control characters are removed from the target."""
    body = envelope(code="BadRequest", target="abc\r\nINFO forged\x00\x1b[31m\x7f\x85-1")
    assert classify(body).target == "abcINFO forged[31m-1"


def test_target_cut_at_128() -> None:
    """A long target is cut to 128 characters."""
    assert classify(envelope(code="BadRequest", target="t" * 500)).target == "t" * 128


# --- markers --------------------------------------------------------------------------------------

GATEWAY_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n"
    b"<hr><center>Microsoft-Azure-Application-Gateway/v2</center>\r\n</body>\r\n</html>\r\n"
)
DOCTYPE_503 = (
    b'<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01//EN""http://www.w3.org/TR/html4/strict.dtd">\r\n'
    b"<HTML><HEAD><TITLE>Service Unavailable</TITLE></HEAD>"
    b"<BODY><h2>Service Unavailable</h2><hr><p>HTTP Error 503. The service is unavailable.</p>"
    b"</BODY></HTML>\r\n"
)


@pytest.mark.parametrize(
    ("body", "kwargs", "marker"),
    [
        pytest.param(b"", {}, EMPTY, id="empty"),
        pytest.param(b" \r\n\t  \n", {}, EMPTY, id="whitespace"),
        pytest.param(GATEWAY_502, {}, HTML, id="html-gateway"),
        pytest.param(DOCTYPE_503, {}, HTML, id="doctype"),
        pytest.param(b"\n\n  " + GATEWAY_502, {}, HTML, id="html-after-blank-lines"),
        pytest.param(ENVELOPE, {"content_type": "text/html; charset=utf-8"}, HTML, id="html-type"),
        pytest.param(b'{"error": {"code": "Bad', {}, TRUNCATED, id="truncated"),
        pytest.param(b'{"error": {"code": "BadRequest", ', {}, TRUNCATED, id="truncated-comma"),
        pytest.param(b'[{"error": {"code": "BadRequest"}}  \n', {}, TRUNCATED, id="cut-array"),
        pytest.param('{"error":{"message":"é'.encode()[:-1], {}, TRUNCATED, id="cut-in-char"),
        pytest.param(b'{"error": {"code": "BadRequest",}}', {}, NOT_JSON, id="trailing-comma"),
        pytest.param(b'{"error": {"code": "BadRequest"}}}', {}, NOT_JSON, id="extra-brace"),
        pytest.param(b"{'error': {'code': 'BadRequest'}}", {}, NOT_JSON, id="single-quotes"),
        pytest.param(b"The service is unavailable.", {}, NOT_JSON, id="plain-text"),
        pytest.param(
            b"upstream connect error or disconnect/reset before headers. reset reason: "
            b"connection termination",
            {},
            NOT_JSON,
            id="envoy-text",
        ),
        pytest.param(b"t", {}, NOT_JSON, id="cut-literal-is-not-json"),
        pytest.param(b'[{"error": {"code": "BadRequest"}}]', {}, WRONG_TYPES, id="array"),
        pytest.param(b'"BadRequest"', {}, WRONG_TYPES, id="bare-string"),
        pytest.param(b'{"error": "BadRequest"}', {}, WRONG_TYPES, id="error-string"),
        pytest.param(b'{"message": "no error key"}', {}, WRONG_TYPES, id="no-error"),
        pytest.param(b'{"error": {"message": "m"}}', {}, WRONG_TYPES, id="no-code"),
        pytest.param(b'{"error": {"code": 400, "message": "m"}}', {}, WRONG_TYPES, id="int-code"),
        pytest.param(envelope(code="X", message=["m"]), {}, WRONG_TYPES, id="list-message"),
        pytest.param(envelope(code="X", message=None), {}, WRONG_TYPES, id="null-message"),
        pytest.param(envelope(code="X", target=12), {}, WRONG_TYPES, id="int-target"),
        pytest.param(envelope(code=""), {}, WRONG_TYPES, id="empty-code"),
        pytest.param(envelope(code="Bad Request"), {}, WRONG_TYPES, id="space-in-code"),
        pytest.param(envelope(code="Bad\nRequest"), {}, WRONG_TYPES, id="newline-in-code"),
        pytest.param(envelope(code="Bad\u200bRequest"), {}, WRONG_TYPES, id="zero-width-in-code"),
        pytest.param(envelope(code="C" * 65), {}, WRONG_TYPES, id="long-code"),
        pytest.param(envelope(code=HTML), {}, WRONG_TYPES, id="marker-as-code"),
        pytest.param(
            b'{"error":{"code":"BadRequest","message":"caf\xe9"}}', {}, BAD_UTF8, id="latin-1"
        ),
        pytest.param(b"\xff\xfe{\x00}\x00", {}, BAD_UTF8, id="utf-16"),
        pytest.param(b"<html>caf\xe9</html>", {}, BAD_UTF8, id="latin-1-html"),
        pytest.param(ENVELOPE, {"complete": False}, TOO_LARGE, id="over-cap"),
        pytest.param(ENVELOPE, {"cap": 16}, TOO_LARGE, id="longer-than-cap"),
        pytest.param(ENVELOPE, {"content_encoding": "zstd"}, BAD_ENCODING, id="zstd"),
        pytest.param(ENVELOPE, {"content_encoding": "gzip"}, BAD_ENCODING, id="not-gzip"),
        pytest.param(
            GZIP_HEADER + b"\xff" * 40, {"content_encoding": "gzip"}, BAD_ENCODING, id="bad-gz"
        ),
        pytest.param(
            gzip.compress(ENVELOPE)[:-8] + b"\0" * 8,
            {"content_encoding": "gzip"},
            BAD_ENCODING,
            id="gzip-crc-mismatch",
        ),
        pytest.param(b"\x1f\x8b\x08\x00", {"content_encoding": "gzip"}, BAD_ENCODING, id="gz-head"),
        pytest.param(b"\xff" * 32, {"content_encoding": "deflate"}, BAD_ENCODING, id="bad-deflate"),
        pytest.param(ENVELOPE, {"content_encoding": "br"}, BAD_ENCODING, id="corrupt-br"),
        pytest.param(
            brotli.compress(ENVELOPE) + b"junk", {"content_encoding": "br"}, BAD_ENCODING, id="br+"
        ),
        pytest.param(ENVELOPE, {"content_encoding": "gzip,gzip,gzip,gzip"}, BAD_ENCODING, id="4x"),
    ],
)
def test_marker(body: bytes, kwargs: dict[str, Any], marker: str) -> None:
    """Each kind of body that carries no usable code is named by its marker, with nothing else."""
    assert classify(body, **kwargs) == ErrorInfo(marker)


def test_markers_are_the_eight() -> None:
    """MARKERS holds exactly the eight marker strings, each starting with an underscore."""
    assert len(MARKERS) == 8
    assert all(marker.startswith("_") for marker in MARKERS)


def test_unexpected_exception_becomes_not_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever goes wrong inside, classify answers a marker instead of raising."""

    def explode(_: object) -> object:
        raise RuntimeError("boom")

    monkeypatch.setattr(orjson, "loads", explode)  # the module classify calls
    assert classify(ENVELOPE) == ErrorInfo(NOT_JSON)


# --- encodings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        pytest.param(None, ENVELOPE, id="none"),
        pytest.param("", ENVELOPE, id="blank"),
        pytest.param("identity", ENVELOPE, id="identity"),
        pytest.param("gzip", gzip.compress(ENVELOPE), id="gzip"),
        pytest.param("x-gzip", gzip.compress(ENVELOPE), id="x-gzip"),
        pytest.param(" GZIP ", gzip.compress(ENVELOPE), id="gzip-case"),
        pytest.param("deflate", zlib.compress(ENVELOPE), id="deflate-zlib"),
        pytest.param("deflate", raw_deflate(ENVELOPE), id="deflate-raw"),
        pytest.param("br", brotli.compress(ENVELOPE), id="br"),
        pytest.param("gzip, br", brotli.compress(gzip.compress(ENVELOPE)), id="gzip-then-br"),
        pytest.param("deflate,identity", zlib.compress(ENVELOPE), id="with-identity"),
        pytest.param("gzip", gzip.compress(ENVELOPE[:40]) + gzip.compress(ENVELOPE[40:]), id="2gz"),
        pytest.param("gzip", gzip.compress(ENVELOPE) + b"\x00" * 8, id="gzip-padding"),
    ],
)
def test_encoded_envelope_parsed(encoding: str | None, body: bytes) -> None:
    """Compressed bodies are decompressed before parsing, in every supported encoding."""
    assert classify(body, content_encoding=encoding) == ErrorInfo(
        "Forbidden", "Missing application roles.", TARGET
    )


def test_empty_compressed_body_is_empty() -> None:
    """An empty body stays EMPTY whatever Content-Encoding claims."""
    assert classify(b"", content_encoding="gzip").code == EMPTY


def test_cut_compressed_stream_classified_on_its_prefix() -> None:
    """A compressed stream that stops early is classified on what it decompressed to."""
    compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    head = compressor.compress(ENVELOPE[:30]) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert classify(head, content_encoding="gzip").code == TRUNCATED
    whole = head + compressor.compress(ENVELOPE[30:]) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert classify(whole, content_encoding="gzip").code == "Forbidden"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_decompressed_exactly_cap_is_read_one_more_is_too_large(encoding: str) -> None:
    """Output of exactly cap bytes is parsed; one byte more is TOO_LARGE."""
    pack = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress}[encoding]
    fits = ENVELOPE + b" " * 200  # compressible, so the compressed body is well under cap
    cap = len(fits)
    assert classify(pack(fits), content_encoding=encoding, cap=cap).code == "Forbidden"
    assert classify(pack(fits + b" "), content_encoding=encoding, cap=cap).code == TOO_LARGE


@pytest.mark.parametrize(
    ("encoding", "pack"),
    [
        pytest.param("gzip", gzip.compress, id="gzip"),
        pytest.param("deflate", zlib.compress, id="deflate-zlib"),
        pytest.param("deflate", raw_deflate, id="deflate-raw"),
        pytest.param("br", lambda data: brotli.compress(data, quality=5), id="br"),
    ],
)
def test_bomb_is_too_large_without_inflating_it(
    encoding: str, pack: Any, zeros_50mib: bytes
) -> None:
    """50 MiB of compressed zeros is TOO_LARGE and decompressing peaks far below 10 MiB."""
    bomb = pack(zeros_50mib)
    assert len(bomb) < 1 << 20
    tracemalloc.start()
    try:
        info = classify(bomb, content_encoding=encoding)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info == ErrorInfo(TOO_LARGE)
    assert peak < 4 << 20


def test_brotli_without_output_limit_still_bounded(
    monkeypatch: pytest.MonkeyPatch, zeros_50mib: bytes
) -> None:
    """With a Brotli that cannot limit output, small input slices still stop a bomb."""
    monkeypatch.setattr(classify_module, "_BROTLI_LIMITS_OUTPUT", False)
    assert classify(brotli.compress(ENVELOPE), content_encoding="br").code == "Forbidden"
    bomb = brotli.compress(zeros_50mib, quality=5)
    assert classify(bomb, content_encoding="br").code == TOO_LARGE


# --- properties -----------------------------------------------------------------------------------

ENCODINGS = st.one_of(
    st.sampled_from([None, "gzip", "deflate", "br", "identity", "gzip, br"]), st.text(max_size=20)
)
BODIES = st.one_of(
    st.binary(max_size=512),
    st.binary(max_size=512).map(gzip.compress),
    st.binary(max_size=512).map(zlib.compress),
    st.binary(max_size=512).map(brotli.compress),
    st.text(max_size=300).map(str.encode),
)


def assert_bounded(info: ErrorInfo) -> None:
    assert isinstance(info, ErrorInfo)
    assert all(
        isinstance(field, str) for field in (info.code, info.message, info.target, info.inner_code)
    )
    assert 0 < len(info.code) <= 64
    assert len(info.message) <= 256
    assert len(info.target) <= 128
    assert len(info.inner_code) <= 64


@settings(max_examples=300, database=None, deadline=None)
@given(body=BODIES, encoding=ENCODINGS, complete=st.booleans(), content_type=st.none() | st.text())
def test_never_raises(
    body: bytes, encoding: str | None, complete: bool, content_type: str | None
) -> None:
    """For any bytes, encoding, completeness and type, classify returns bounded strings."""
    info = classify(body, complete=complete, content_encoding=encoding, content_type=content_type)
    assert_bounded(info)
    if not complete:
        assert info.code == TOO_LARGE


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=150, database=None, deadline=None)
@given(doc=JSON)
def test_arbitrary_json_never_raises(doc: Any) -> None:
    """Any JSON document, wrapped as an error or not, gives a bounded result."""
    assert_bounded(classify(orjson.dumps(doc)))
    assert_bounded(classify(orjson.dumps({"error": doc})))
    assert_bounded(classify(orjson.dumps({"error": {"code": "X", "innerError": doc}})))


CODES = st.text(st.characters(exclude_categories=("C", "Z")), min_size=1, max_size=64).filter(
    lambda code: code not in MARKERS
)
INNER = st.recursive(
    st.fixed_dictionaries({}, optional={"request-id": st.text(), "code": st.text()}),
    lambda inner: st.fixed_dictionaries(
        {}, optional={"request-id": st.text(), "code": st.text(), "innerError": inner}
    ),
    max_leaves=4,
)


@settings(max_examples=200, database=None, deadline=None)
@given(
    code=CODES | st.sampled_from(sorted(ERROR_TABLE)) | st.just("429"),
    fields=st.fixed_dictionaries(
        {}, optional={"message": st.text(), "target": st.text(), "innerError": INNER}
    ),
    extra=st.dictionaries(st.text().filter(lambda key: key != "error"), JSON, max_size=2),
)
def test_well_formed_envelope_round_trips_its_code(
    code: str, fields: dict[str, Any], extra: dict[str, Any]
) -> None:
    """A well-formed envelope with a valid code gives that code (after aliases), bounded fields."""
    info = classify(orjson.dumps({**extra, "error": {"code": code, **fields}}))
    assert_bounded(info)
    assert info.code == ALIASES.get(code, code)
    message = fields.get("message", "")
    assert info.message == (message if len(message) <= 256 else message[:255] + "…")
    assert not any(ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 for char in info.target)
