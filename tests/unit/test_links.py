"""The paging-link rewriter: which links it owns, chunking, escapes, the caller's Host."""

from __future__ import annotations

import itertools
import os

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from proxy import pages
from proxy.links import Links, caller_origin, valid_host

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
UPSTREAM = "https://api.security.microsoft.com"
CALLER = "http://127.0.0.1:8080"
LINKS = Links(UPSTREAM)


def _page(link: str, key: str = "@odata.nextLink", escape: bool = False) -> bytes:
    body = orjson.dumps({"value": [{"id": "a"}], key: link})
    return body.replace(b"/", b"\\/") if escape else body


@pytest.mark.parametrize(
    "link",
    [
        "https://api.security.microsoft.com/api/machines?$skip=10",
        "HTTPS://API.Security.Microsoft.COM/api/machines?$skip=10",
        "https://api.security.microsoft.com:443/api/machines?$skip=10",
        "https://api.security.microsoft.com?$skiptoken=x",
    ],
)
def test_links_on_the_upstreams_origin_are_rewritten(link: str) -> None:
    """Scheme and host match case-insensitively, with or without the default port."""
    out, count = LINKS.rewrite(_page(link), CALLER)
    assert count == 1
    value = orjson.loads(out)["@odata.nextLink"]
    assert value.startswith(CALLER)
    assert value[len(CALLER) :] in ("/api/machines?$skip=10", "?$skiptoken=x")


@pytest.mark.parametrize(
    "link",
    [
        "https://graph.microsoft.com/v1.0/security/alerts_v2?$skiptoken=1",
        "http://api.security.microsoft.com/api/machines",
        "https://api.security.microsoft.com:8443/api/machines",
        "https://api.security.microsoft.com.example.net/api/machines",
        "https://evil.example/https://api.security.microsoft.com/api/machines",
    ],
)
def test_links_on_other_origins_are_left_alone(link: str) -> None:
    """Another scheme, port or host (a longer one included) is not the upstream's."""
    body = _page(link)
    assert LINKS.rewrite(body, CALLER) == (body, 0)


def test_only_the_paging_keys_are_rewritten() -> None:
    """The origin in any other key or in an item is data, not a link to follow."""
    body = orjson.dumps(
        {
            "@odata.context": f"{UPSTREAM}/api/$metadata#Machines",
            "value": [{"url": f"{UPSTREAM}/api/machines/1", "note": '"@odata.nextLink":"x"'}],
        }
    )
    assert LINKS.rewrite(body, CALLER) == (body, 0)


def test_escaped_slashes_keep_their_escape() -> None:
    """A link written with ``\\/`` gets the caller's origin written with ``\\/`` too."""
    out, count = LINKS.rewrite(_page(f"{UPSTREAM}/api/machines?$skip=1", escape=True), CALLER)
    assert count == 1
    assert b'"http:\\/\\/127.0.0.1:8080\\/api\\/machines?$skip=1"' in out
    assert orjson.loads(out)["@odata.nextLink"] == f"{CALLER}/api/machines?$skip=1"


def test_delta_links_and_spaced_json_are_rewritten() -> None:
    """``@odata.deltaLink`` counts, and so does whitespace a pretty-printer adds."""
    body = b'{\n  "@odata.deltaLink" : \n "https://api.security.microsoft.com/x?$deltatoken=1"\n}'
    out, count = LINKS.rewrite(body, CALLER)
    assert count == 1
    assert orjson.loads(out)["@odata.deltaLink"] == f"{CALLER}/x?$deltatoken=1"


def test_a_body_that_is_not_json_passes_unchanged() -> None:
    """Bytes that only claim to be JSON never make the rewriter fail or change them."""
    body = bytes(range(256)) * 64 + b'"@odata.nextLink":"https://api.security.microsoft.com'
    assert LINKS.rewrite(body, CALLER) == (body, 0)


_LINK_PAGES = st.builds(
    lambda items, link, key, escape: _page(link, key, escape).replace(
        b'"value":[', b'"value":[' + items, 1
    ),
    items=st.binary(max_size=300).map(lambda b: orjson.dumps(b.hex()) + b","),
    link=st.sampled_from(
        [
            f"{UPSTREAM}/api/machines?$skip=1",
            "https://API.security.microsoft.com:443/x",
            "https://graph.microsoft.com/v1.0/x",
            f"{UPSTREAM}.example/x",
        ]
    ),
    key=st.sampled_from(["@odata.nextLink", "@odata.deltaLink", "@odata.context"]),
    escape=st.booleans(),
)


@PROPERTY
@given(
    body=_LINK_PAGES | st.binary(max_size=400),
    cuts=st.lists(st.integers(min_value=0, max_value=500), max_size=30),
)
def test_any_chunking_gives_the_whole_body_rewrite(body: bytes, cuts: list[int]) -> None:
    """Split anywhere, the streamed output equals the whole-body rewrite, and the carried tail
    never exceeds its bound."""
    expected, count = LINKS.rewrite(body, CALLER)
    rewriter = LINKS.rewriter(CALLER)
    edges = sorted({0, len(body), *(c for c in cuts if c <= len(body))})
    out = []
    for start, end in itertools.pairwise(edges):
        out.append(rewriter.feed(body[start:end]))
        assert rewriter.carried <= LINKS.tail_bound
    out.append(rewriter.flush())
    assert b"".join(out) == expected
    assert rewriter.count == count


def test_a_link_split_at_every_position_is_rewritten() -> None:
    """Every two-way split of a page, and byte-at-a-time feeding, rewrite the one link."""
    body = _page(f"{UPSTREAM}/api/machines?$skip=10", escape=True)
    expected, _ = LINKS.rewrite(body, CALLER)
    for cut in range(len(body) + 1):
        rewriter = LINKS.rewriter(CALLER)
        assert rewriter.feed(body[:cut]) + rewriter.feed(body[cut:]) + rewriter.flush() == expected
    rewriter = LINKS.rewriter(CALLER)
    assert b"".join(
        rewriter.feed(body[i : i + 1]) for i in range(len(body))
    ) + rewriter.flush() == (expected)


def test_the_carried_tail_is_bounded_on_a_huge_body() -> None:
    """Megabytes of items before the link: what is carried between chunks stays under the bound."""
    items = b'{"id":"' + b"a" * 100 + b'"},'
    body = b'{"value":[' + items * 40_000 + b'{}],"@odata.nextLink":"' + UPSTREAM.encode() + b'/x"}'
    rewriter = LINKS.rewriter(CALLER)
    out = []
    most = 0
    for start in range(0, len(body), 16_384):
        out.append(rewriter.feed(body[start : start + 16_384]))
        most = max(most, rewriter.carried)
    out.append(rewriter.flush())
    assert most <= LINKS.tail_bound < 200
    assert b"".join(out).endswith(b'"@odata.nextLink":"http://127.0.0.1:8080/x"}')


@pytest.mark.parametrize(
    "host",
    ["localhost", "proxy.internal:8080", "127.0.0.1:8080", "[::1]:8080", "[2001:db8::1]", "a_b.c"],
)
def test_plain_hosts_are_the_callers_origin(host: str) -> None:
    """A host name or IP literal with an optional port is taken as the caller wrote it."""
    assert caller_origin("http", [host], ("127.0.0.1", 8080)) == f"http://{host}"


@pytest.mark.parametrize(
    "host",
    [
        'evil"}, "x": "',
        "evil\\u0022",
        "a b",
        "user@host",
        "host/path",
        "host:port",
        "host:99999",
        "[::zz]",
        "",
        "é.example",
        "a" * 300,
        "host\r\nX: 1",
        "evil.example#",
    ],
)
def test_hostile_hosts_fall_back_to_the_listeners_address(host: str) -> None:
    """Quotes, backslashes, spaces, userinfo or anything not an authority never reach the JSON."""
    assert valid_host(host) is None
    assert caller_origin("http", [host], ("127.0.0.1", 8080)) == "http://127.0.0.1:8080"


def test_two_hosts_or_none_fall_back_and_ipv6_is_bracketed() -> None:
    """Two Host headers, or none, name no origin: the listener's address does, default port left
    out."""
    assert caller_origin("http", ["a", "b"], ("::1", 8080)) == "http://[::1]:8080"
    assert caller_origin("https", [], ("10.0.0.1", 443)) == "https://10.0.0.1"
    assert caller_origin("http", [], None) == "http://localhost"


@PROPERTY
@given(host=st.text(max_size=40))
def test_a_rewritten_link_never_carries_json_syntax_from_host(host: str) -> None:
    """Whatever the Host, the rewritten page is valid JSON with the link under its own key."""
    origin = caller_origin("http", [host], ("127.0.0.1", 8080))
    body = _page(f"{UPSTREAM}/api/machines?$skip=1")
    out, count = LINKS.rewrite(body, origin)
    assert count == 1
    page = orjson.loads(out)
    assert set(page) == {"value", "@odata.nextLink"}
    assert page["@odata.nextLink"] == f"{origin}/api/machines?$skip=1"


class _Transport:
    """A transport that says which address the caller connected to, and counts the asks."""

    def __init__(self) -> None:
        self.asked = 0

    def get_extra_info(self, name: str) -> object:
        self.asked += name == "sockname"
        return ("127.0.0.1", 8080)


@pytest.mark.parametrize(
    ("hosts", "origin", "asked"),
    [
        (["proxy.internal:8443"], "https://proxy.internal:8443", 0),
        (["a b"], "https://127.0.0.1:8080", 1),
        ([], "https://127.0.0.1:8080", 1),
    ],
)
def test_origin_of_asks_the_socket_only_without_a_usable_host(
    hosts: list[str], origin: str, asked: int
) -> None:
    """A valid Host names the origin without a system call; otherwise the socket's address does."""
    transport = _Transport()
    headers = CIMultiDict([("Host", host) for host in hosts])
    request = make_mocked_request("GET", "/api/machines", headers=headers, transport=transport)
    transport.asked = 0  # the request's own making may ask
    assert pages.origin_of(request, "https") == origin
    assert transport.asked == asked


@PROPERTY
@given(
    pieces=st.lists(
        st.sampled_from(
            [
                b'{"value":[]',
                b',"@odata.nextLink":"' + UPSTREAM.encode() + b'/api/machines?$skip=1"',
                b',"@odata.deltaLink" : "' + UPSTREAM.encode() + b'\\/x"',
                b',"@odata.context":"x"',
                b',"@odata.nextLink":"https://elsewhere.example/x"',
                b"}",
            ]
        )
        | st.binary(max_size=12),
        max_size=8,
    )
)
def test_a_whole_body_is_rewritten_as_the_rewriter_does(pieces: list[bytes]) -> None:
    """A body read whole comes out as the streaming rewriter makes it, links or none."""
    body = b"".join(pieces)
    pipe = pages.Pipe(LINKS.rewriter(CALLER), None)
    expected, count = LINKS.rewrite(body, CALLER)
    assert pages.whole(pipe, body) == expected
    assert pipe.count == count
