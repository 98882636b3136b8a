"""Fuzzing the classifier, the guard, the router and the code labels with hypothesis properties.

The fast slice runs in ``make test``: ``FUZZ_EXAMPLES`` examples per property, 300 by default.
``make fuzz`` runs this same file through ``fuzz/run.py``, one property per process with
``FUZZ_EXAMPLES`` raised to its share (100,000 cases for the classifier, 100,000 for the guard),
and prints how many cases each property ran and how long it took.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from urllib.parse import unquote

import brotli
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import classify as classify_module
from proxy import codes
from proxy.catalogue import CATALOGUE
from proxy.classify import CODE_MAX, MARKERS, MESSAGE_MAX, TARGET_MAX, TOO_LARGE, classify
from proxy.errors import RefusalError
from proxy.guard import upstream_target
from proxy.metrics import MAX_DYNAMIC_CODES, OTHER, CodeLabels
from proxy.routing import Router

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

UPSTREAM = "https://api.security.microsoft.com"
ROUTER = Router()
KNOWN_CODES = frozenset(codes.ERROR_TABLE) | codes.SEEN_IN_THE_WILD | codes.PROXY_CODES | MARKERS
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ENCODED_SEPARATOR = re.compile(r"%(?:2f|5c|00)", re.IGNORECASE)


# --- the error classifier ---------------------------------------------------------------------

_CODES = st.one_of(
    st.sampled_from(sorted(KNOWN_CODES | {"429", "", " ", "Bad Request", "x" * 65})),
    st.text(max_size=70),
    st.from_regex(r"[A-Za-z][A-Za-z0-9_.\-]{0,70}", fullmatch=True),
)
_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=40),
)
_JSON = st.recursive(
    _LEAF,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3)
    ),
    max_leaves=8,
)
_INNER = st.recursive(
    st.fixed_dictionaries(
        {}, optional={"request-id": st.text(max_size=140) | _JSON, "code": _CODES | _JSON}
    ),
    lambda inner: st.fixed_dictionaries(
        {},
        optional={
            "request-id": st.text(max_size=140),
            "code": _CODES,
            "innerError": inner,
            "innererror": inner | _JSON,
        },
    ),
    max_leaves=6,
)
_ENVELOPES = st.fixed_dictionaries(
    {"code": _CODES | _JSON},
    optional={
        "message": st.text(max_size=300) | _JSON,
        "target": st.text(max_size=200) | _JSON,
        "innerError": _INNER | _JSON,
    },
).map(lambda error: orjson.dumps({"error": error}))
_PLAIN_BODIES = st.one_of(
    _ENVELOPES,
    _JSON.map(orjson.dumps),
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    st.sampled_from(
        [b"", b"   \r\n", b"\xef\xbb\xbf", b"<html>", b"{", b"[", b'{"error":', b"\xff\xfe"]
    ),
)


def _compress(body: bytes, layer: str) -> bytes:
    if layer in ("gzip", "x-gzip"):
        return gzip.compress(body, mtime=0)
    if layer == "deflate":
        return zlib.compress(body)
    if layer == "deflate-raw":
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return packer.compress(body) + packer.flush()
    if layer == "br":
        return bytes(brotli.compress(body, quality=1))
    return body


@st.composite
def _error_bodies(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """An error body and its Content-Encoding: plain, compressed (also stacked), cut or corrupt."""
    body = draw(_PLAIN_BODIES)
    layers = draw(
        st.lists(st.sampled_from(["gzip", "x-gzip", "deflate", "deflate-raw", "br"]), max_size=4)
    )
    for layer in layers:
        body = _compress(body, layer)
    header = ", ".join("deflate" if layer == "deflate-raw" else layer for layer in layers)
    mutation = draw(st.sampled_from(["none", "none", "cut", "flip", "append"]))
    if body and mutation == "cut":
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif body and mutation == "flip":
        at = draw(st.integers(0, len(body) - 1))
        body = body[:at] + bytes([body[at] ^ draw(st.integers(1, 255))]) + body[at + 1 :]
    elif mutation == "append":
        body += draw(st.binary(min_size=1, max_size=20))
    encoding = draw(
        st.one_of(
            st.just(header or None),
            st.none(),
            st.sampled_from(["identity", "compress", "gzip,gzip,gzip,gzip", "GZIP", " br ,", ""]),
            st.text(max_size=30),
        )
    )
    return body, encoding


_CONTENT_TYPES = (
    st.none()
    | st.sampled_from(
        ["application/json", "text/html; charset=utf-8", "TEXT/HTML", "application/xhtml+xml"]
    )
    | st.text(max_size=40)
)
_CAPS = st.sampled_from([1 << 20, 4096, 64, 16, 1]) | st.integers(1, 2048)


def _assert_bounded(info: classify_module.ErrorInfo) -> None:
    assert isinstance(info, classify_module.ErrorInfo)
    if info.code in MARKERS:
        assert (info.message, info.target, info.inner_code) == ("", "", "")
        return
    for code in filter(None, (info.code, info.inner_code)):
        assert 0 < len(code) <= CODE_MAX
        assert code.isprintable()
        assert " " not in code
        assert code not in MARKERS
    assert len(info.message) <= MESSAGE_MAX
    assert len(info.target) <= TARGET_MAX
    assert not _CONTROL.search(info.target)


@FUZZ
@given(encoded=_error_bodies(), complete=st.booleans(), content_type=_CONTENT_TYPES, cap=_CAPS)
def test_classify_never_raises_and_bounds_every_field(
    encoded: tuple[bytes, str | None], complete: bool, content_type: str | None, cap: int
) -> None:
    """Any body, encoding, type, completeness and cap gives a bounded ErrorInfo, never raises."""
    body, encoding = encoded
    # The inner function, not the public one: the public one's catch-all would hide a bug here
    # as a plausible _not_json.
    info = classify_module._classify(body, complete, encoding, content_type, cap)
    assert info == classify(
        body, complete=complete, content_encoding=encoding, content_type=content_type, cap=cap
    )
    _assert_bounded(info)
    if not complete or len(body) > cap:
        assert info.code == TOO_LARGE


@FUZZ
@given(body=_ENVELOPES, layers=st.lists(st.sampled_from(["gzip", "deflate", "br"]), max_size=3))
def test_classify_reads_an_encoded_envelope_as_its_plain_bytes(
    body: bytes, layers: list[str]
) -> None:
    """An envelope compressed (up to three stacked codings) is classified as its plain bytes."""
    encoded = body
    for layer in layers:
        encoded = _compress(encoded, layer)
    info = classify(encoded, content_encoding=", ".join(layers) or None)
    assert info == classify(body)


# --- the request guard ------------------------------------------------------------------------

_PIECES = st.sampled_from(
    ["/", ".", "..", "%2e", "%2E", "%2e%2e", ".%2E", "%2f", "%2F", "%5c", "%5C", "%00", "\\",
     "?", "#", "a", "api", "machines", ";", "..;", "%", "%25", "%252e", "%u002e", "%c0%ae", "//",
     "@", ":", " ", "\x00", "é"]
)  # fmt: skip
_DOTTY = st.lists(_PIECES, max_size=14).map("".join)
_AUTHORITIES = st.sampled_from(
    ["api.security.microsoft.com", "API.Security.Microsoft.com", "api.security.microsoft.com:443",
     "api.security.microsoft.com:444", "api.security.microsoft.com.evil.example", "evil.example",
     "127.0.0.1:9", "localhost", "[::1]:443", "2130706433", "user:pw@api.security.microsoft.com",
     "api.security.microsoft.com@evil.example", "", ":443", "[", "%2e%2e"]
) | st.text(max_size=20)  # fmt: skip
_SCHEMES = st.sampled_from(["https", "HTTPS", "http", "ws", "ftp", "x", "h+t.t-p"])
_TARGETS = st.one_of(
    st.text(max_size=80),
    st.tuples(st.sampled_from(["", "/", "/api/", "*", "//"]), _DOTTY).map("".join),
    st.tuples(_SCHEMES, _AUTHORITIES, _DOTTY | st.text(max_size=30)).map(
        lambda parts: f"{parts[0]}://{parts[1]}{parts[2]}"
    ),
)
_METHODS = st.sampled_from(["GET", "POST", "DELETE", "OPTIONS", "CONNECT", "HEAD"]) | st.text(
    max_size=8
)


def _has_dot_segment(path: str) -> bool:
    # As the upstream will read it: percent-decoded once.
    return any(segment in (".", "..") for segment in unquote(path).split("/")) or any(
        segment in (".", "..") for segment in path.split("/")
    )


@FUZZ
@given(method=_METHODS, raw_target=_TARGETS)
def test_guard_returns_a_safe_path_or_refuses(method: str, raw_target: str) -> None:
    """upstream_target gives a '/' path without dot segments, encoded separators, '#'; or a 400."""
    refusal = None
    try:
        target = upstream_target(method, raw_target, UPSTREAM)
    except RefusalError as exc:
        refusal = exc
    if refusal is not None:
        assert (refusal.status, refusal.code) == (400, "BadRequest")
        return
    assert method != "CONNECT"
    assert target.startswith("/")
    assert "#" not in target
    path = target.partition("?")[0]
    assert not _has_dot_segment(path), target
    assert not _ENCODED_SEPARATOR.search(path), target
    assert "\\" not in path
    # Byte-exact: an origin-form target is sent as received, an absolute one as its own tail.
    if raw_target.startswith("/"):
        assert target == raw_target
    else:
        rest = raw_target.partition("://")[2]
        tail = rest[
            min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest)) :
        ]
        assert target == (tail if tail.startswith("/") else "/" + tail)


_OTHER_ORIGINS = st.one_of(
    st.tuples(
        st.sampled_from(["http", "https", "ws"]),
        st.from_regex(r"[a-z][a-z0-9\-]{0,20}(\.[a-z]{2,6}){0,2}", fullmatch=True).filter(
            lambda host: host != "api.security.microsoft.com"
        ),
        st.none() | st.integers(1, 65535),
    ).map(lambda p: f"{p[0]}://{p[1]}" + ("" if p[2] is None else f":{p[2]}")),
    st.sampled_from(
        [
            "http://api.security.microsoft.com",
            "https://api.security.microsoft.com:444",
            "https://api.security.microsoft.com.evil.example",
            "https://127.0.0.1:443",
            "https://[::1]",
            "https://2130706433",
            "https://evil.example#@api.security.microsoft.com",
        ]
    ),
)


@FUZZ
@given(origin=_OTHER_ORIGINS, rest=st.sampled_from(["", "/", "/api/machines", "?x=1"]) | _DOTTY)
def test_guard_refuses_every_other_origin(origin: str, rest: str) -> None:
    """An absolute-form target naming any origin but the upstream is always refused with 400."""
    with pytest.raises(RefusalError) as caught:
        upstream_target("GET", origin + rest, UPSTREAM)
    assert caught.value.status == 400


# --- the router and the label sets --------------------------------------------------------------


def _example_path(pattern: str, segment: str, suffix: str) -> str:
    path = pattern.partition(" ")[2]
    path = re.sub(r"\{[^}]+\}", lambda _: segment or "x", path).replace("**", segment or "y")
    return path.replace("*", segment) + suffix


_PATTERNS = st.sampled_from([p for spec in CATALOGUE for p in spec.match])
_SEGMENTS = st.text(alphabet=st.characters(codec="ascii", exclude_characters="%"), max_size=12)
_SUFFIXES = ["", "/", "//", "(ip='1.2.3.4')", "/x/y"]
_NEAR_PATHS = st.builds(
    _example_path,
    _PATTERNS,
    _SEGMENTS | st.text(alphabet=st.characters(codec="ascii"), max_size=12),
    st.sampled_from([*_SUFFIXES, "%2F", "%", "%zz", "%ff", "%2e%2e"]),
)
_ROUTE_METHODS = st.sampled_from(
    ["GET", "get", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND", "*", ""]
) | st.text(max_size=10)


@FUZZ
@given(method=_ROUTE_METHODS, path=_NEAR_PATHS | st.text(max_size=100) | _DOTTY)
def test_router_never_raises_and_names_a_known_route(method: str, path: str) -> None:
    """Router.match gives a route from the closed name set for any method and path text."""
    route = ROUTER.match(method, path)
    assert route.name in ROUTER.names
    assert ROUTER.match("GET", path).name == ROUTER.match("HEAD", path).name


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "DELETE", "PATCH"]),
    path=st.builds(_example_path, _PATTERNS, _SEGMENTS, st.sampled_from(_SUFFIXES)),
    mask=st.integers(0, 2**64 - 1),
)
def test_router_reads_percent_encoded_letters_as_the_letters(
    method: str, path: str, mask: int
) -> None:
    """Percent-encoding letters of a path never moves it to another route (nor evades one)."""
    encoded = "".join(
        f"%{ord(char):02X}" if char.isalnum() and mask >> (i % 64) & 1 else char
        for i, char in enumerate(path)
    )
    assert ROUTER.match(method, encoded).name == ROUTER.match(method, path).name


@FUZZ
@given(codes_seen=st.lists(_CODES, max_size=300))
def test_code_labels_stay_within_the_budget(codes_seen: list[str]) -> None:
    """However many codes arrive, labels are known codes, up to 100 shaped others, or 'other'."""
    labels = CodeLabels()
    pairs = [(code, labels.label(code)) for code in codes_seen]
    dynamic = {label for _, label in pairs} - KNOWN_CODES - {OTHER}
    assert len(dynamic) <= MAX_DYNAMIC_CODES
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", label) for label in dynamic)
    assert all(label in (code, OTHER) for code, label in pairs)
