"""Tests for proxy.absolute_form: which absolute-form targets name the listener, and the refusal."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.absolute_form import (
    Listener,
    caller_origin,
    names_listener,
    not_a_forward_proxy,
    shown_authority,
)
from proxy.errors import RefusalError
from proxy.guard import upstream_target

UPSTREAM = "https://api.security.microsoft.com"
LOOPBACK = Listener(UPSTREAM, "http", "127.0.0.1", 8080, ("127.0.0.1", 8080))
# A gateway: every interface, this connection on the pod's address.
WILDCARD = Listener(UPSTREAM, "http", "0.0.0.0", 8080, ("10.0.0.5", 8080))
DUAL = Listener(UPSTREAM, "http", "::", 8080, ("::ffff:127.0.0.1", 8080))


@pytest.mark.parametrize(
    ("listener", "scheme", "authority"),
    [
        (LOOPBACK, "http", "127.0.0.1:8080"),
        (LOOPBACK, "https", "127.0.0.1:8080"),
        (LOOPBACK, "HTTP", "127.0.0.1:8080"),
        (LOOPBACK, "http", "localhost:8080"),
        (LOOPBACK, "http", "LocalHost:8080"),
        (LOOPBACK, "http", "127.0.0.1:08080"),
        (WILDCARD, "http", "10.0.0.5:8080"),
        (WILDCARD, "http", "127.0.0.1:8080"),
        (WILDCARD, "http", "127.1.2.3:8080"),
        (WILDCARD, "http", "localhost:8080"),
        (WILDCARD, "http", "[::ffff:10.0.0.5]:8080"),
        (DUAL, "http", "[::1]:8080"),
        (DUAL, "http", "127.0.0.1:8080"),
        (DUAL, "http", "[0:0:0:0:0:0:0:1]:8080"),
    ],
)
def test_the_listeners_own_authority_names_it(
    listener: Listener, scheme: str, authority: str
) -> None:
    """The listener's own address and port, loopback forms of it, either scheme: it is named."""
    assert names_listener(scheme, authority, listener)


@pytest.mark.parametrize(
    ("listener", "scheme", "authority"),
    [
        (LOOPBACK, "http", "127.0.0.1"),  # port 80
        (LOOPBACK, "https", "127.0.0.1"),  # port 443
        (LOOPBACK, "http", "127.0.0.1:"),  # an empty port is the default
        (LOOPBACK, "http", "127.0.0.1:8081"),
        (LOOPBACK, "http", "127.0.0.1:0"),
        (LOOPBACK, "http", "127.0.0.1:99999"),
        (LOOPBACK, "http", "127.0.0.2:8080"),  # another loopback address: not this socket
        (LOOPBACK, "http", "[::1]:8080"),
        (LOOPBACK, "http", "localhost.:8080"),
        (LOOPBACK, "http", "2130706433:8080"),
        (LOOPBACK, "http", "0x7f.1:8080"),
        (LOOPBACK, "http", "%31%32%37.0.0.1:8080"),
        (LOOPBACK, "http", "127.0.0.1%3A8080"),
        (LOOPBACK, "http", "u@127.0.0.1:8080"),
        (LOOPBACK, "http", "127.0.0.1:8080@other.invalid"),
        (LOOPBACK, "http", "[::1%25lo]:8080"),
        (LOOPBACK, "http", "[127.0.0.1]:8080"),
        (LOOPBACK, "ws", "127.0.0.1:8080"),
        (LOOPBACK, "ftp", "127.0.0.1:8080"),
        (LOOPBACK, "http", ""),
        (WILDCARD, "http", "defender-proxy:8080"),  # a Service name: not provably this listener
        (WILDCARD, "http", "10.0.0.6:8080"),
        (WILDCARD, "http", "0.0.0.0:8080"),
        (WILDCARD, "http", "[::1]:8080"),  # 0.0.0.0 serves IPv4 only
        (Listener(UPSTREAM, "http", "127.0.0.1", 0), "http", "127.0.0.1:0"),
    ],
)
def test_any_other_authority_does_not_name_it(
    listener: Listener, scheme: str, authority: str
) -> None:
    """Another host, port or scheme, userinfo, percent-encoding, odd IP spellings: not named."""
    assert not names_listener(scheme, authority, listener)


def test_without_the_connections_address_the_configured_port_counts() -> None:
    """Before the connection's own side is known, the configured host and port are compared."""
    listener = Listener(UPSTREAM, "http", "127.0.0.1", 8080)
    assert names_listener("http", "127.0.0.1:8080", listener)
    assert not names_listener("http", "127.0.0.1:8081", listener)


@pytest.mark.parametrize(
    ("listener", "base"),
    [
        (LOOPBACK, "http://127.0.0.1:8080"),
        (WILDCARD, "http://10.0.0.5:8080"),
        (DUAL, "http://127.0.0.1:8080"),
        (Listener(UPSTREAM, "http", "::1", 80, ("::1", 80)), "http://[::1]"),
        (Listener(UPSTREAM, "https", "127.0.0.1", 443), "https://127.0.0.1"),
        (Listener(UPSTREAM, "http", "0.0.0.0", 8080), "http://127.0.0.1:8080"),
        (Listener(UPSTREAM, "http", "127.0.0.1", 0), ""),
    ],
)
def test_the_base_url_is_the_address_the_caller_reached(listener: Listener, base: str) -> None:
    """The base URL advised is the connection's own address on the listener's scheme."""
    assert listener.base_url() == base


def test_the_refusal_names_the_origin_the_address_and_what_to_do() -> None:
    """The refusal: 400 BadRequest, the origin served, the base URL; the reason phrase says it."""
    exc = not_a_forward_proxy("CONNECT x:443 is refused", LOOPBACK, UPSTREAM)
    assert (exc.status, exc.code) == (400, "BadRequest")
    assert exc.message == (
        "CONNECT x:443 is refused: this proxy is not a forward proxy: it serves "
        "https://api.security.microsoft.com at http://127.0.0.1:8080; set the client's base URL "
        "to http://127.0.0.1:8080 instead of HTTP_PROXY/HTTPS_PROXY"
    )
    assert exc.reason == "Not a forward proxy: set the base URL to http://127.0.0.1:8080"


def test_without_a_listener_the_refusal_still_says_what_to_do() -> None:
    """With no listener known, the refusal names the origin and points to the proxy's address."""
    exc = not_a_forward_proxy("CONNECT is refused", None, UPSTREAM)
    assert "it serves https://api.security.microsoft.com;" in exc.message
    assert "base URL to this proxy's own address instead of HTTP_PROXY" in exc.message


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("evil.example:443", "evil.example:443"),
        ("[::1]:8080", "[::1]:8080"),
        ("evil\r\nX-Injected: 1", ""),
        ("a" * 101, ""),
        ("user:pw@host", ""),
        ("h%41st", ""),
        ("<script>", ""),
    ],
)
def test_only_a_short_plain_authority_is_ever_shown(text: str, shown: str) -> None:
    """A caller's authority is shown only when short and made of an authority's characters."""
    assert shown_authority(text) == shown


def test_the_caller_origin_is_the_named_authority_on_the_listeners_scheme() -> None:
    """Paging links go to the authority the target named, on the listener's own scheme."""
    assert caller_origin("https://LocalHost:8080/api?x", LOOPBACK) == "http://localhost:8080"
    assert caller_origin("http://other.invalid:8080/api", LOOPBACK) == ""
    assert caller_origin("/api/alerts", LOOPBACK) == ""


# --- through the guard ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("http://127.0.0.1:8080/api/alerts?$top=1", "/api/alerts?$top=1"),
        ("HTTPS://LOCALHOST:8080/api/alerts", "/api/alerts"),
        ("http://127.0.0.1:8080", "/"),
        ("http://127.0.0.1:8080?x=1", "/?x=1"),
        ("http://127.0.0.1:8080//other.invalid/api", "//other.invalid/api"),
    ],
)
def test_the_guard_serves_a_target_naming_the_listener_as_origin_form(
    target: str, expected: str
) -> None:
    """An absolute-form target naming the listener gives its origin-form rest, byte for byte."""
    assert upstream_target("GET", target, UPSTREAM, LOOPBACK) == expected


@pytest.mark.parametrize(
    ("method", "target", "part"),
    [
        ("CONNECT", "other.invalid:443", "CONNECT other.invalid:443 is refused"),
        ("CONNECT", "127.0.0.1:8080", "CONNECT 127.0.0.1:8080 is refused"),
        ("CONNECT", "bad\x7fhost:1", "CONNECT is refused"),
        ("GET", "http://other.invalid/api", "naming another origin (other.invalid) is refused"),
        ("GET", "http://127.0.0.1:8080@other.invalid/", "credentials in the request target"),
        ("GET", "http://u:secret@127.0.0.1:8080/api", "credentials in the request target"),
        ("GET", "http://[::1/api", "not a valid URL"),
        ("GET", "http://127.0.0.1%3A8080/api", "naming another origin (not shown) is refused"),
    ],
)
def test_every_forward_proxy_refusal_says_what_to_do(method: str, target: str, part: str) -> None:
    """CONNECT and every refused absolute-form target: 400 with the base URL; no secret shown."""
    with pytest.raises(RefusalError) as caught:
        upstream_target(method, target, UPSTREAM, LOOPBACK)
    exc = caught.value
    assert (exc.status, exc.code) == (400, "BadRequest")
    assert part in exc.message
    assert "set the client's base URL to http://127.0.0.1:8080" in exc.message
    assert "secret" not in exc.message
    assert exc.reason is not None


def test_the_rest_of_a_target_naming_the_listener_is_still_checked() -> None:
    """Dot segments after the listener's own authority are refused as in origin-form."""
    with pytest.raises(RefusalError):
        upstream_target("GET", "http://127.0.0.1:8080/api/../admin", UPSTREAM, LOOPBACK)


_HOSTS = st.sampled_from(
    [
        "127.0.0.1", "localhost", "LOCALHOST", "127.0.0.2", "[::1]", "[::ffff:127.0.0.1]",
        "other.invalid", "api.security.microsoft.com", "2130706433", "%31%32%37.0.0.1", "",
    ]
)  # fmt: skip
_PORTS = st.sampled_from(["", ":", ":8080", ":08080", ":8081", ":80", ":443", ":65536"])
_USERINFO = st.sampled_from(["", "", "u@", "u:p@", "@", "127.0.0.1:8080@", "other.invalid@"])
_JUNK = st.sampled_from(["%3A", "%40", ".", "#", "\\", "[", "]", "/", "?", "@", ":", " "])
_OWN_HOSTS = frozenset({"127.0.0.1", "localhost", "::ffff:127.0.0.1"})


@settings(max_examples=500, deadline=None)
@given(
    scheme=st.sampled_from(["http", "https", "HTTP", "ws"]),
    authority=st.tuples(_USERINFO, _HOSTS, _PORTS).map("".join),
    junk=st.lists(st.tuples(st.integers(0, 40), _JUNK), max_size=2),
    rest=st.sampled_from(["", "/api/alerts", "?x=1"]),
)
def test_what_the_guard_forwards_a_standard_parser_reads_as_ours(
    scheme: str, authority: str, junk: list[tuple[int, str]], rest: str
) -> None:
    """Whatever the guard forwards, urllib reads as the listener's or the upstream's origin."""
    for at, piece in junk:
        authority = authority[:at] + piece + authority[at:]
    target = f"{scheme}://{authority}{rest}"
    try:
        upstream_target("GET", target, UPSTREAM, LOOPBACK)
    except RefusalError:
        return
    try:
        read = urlsplit(target)
        port = read.port
    except ValueError:
        raise AssertionError(f"forwarded what urllib cannot read: {target!r}") from None
    assert read.username is None
    assert read.password is None
    own = read.hostname in _OWN_HOSTS and port == 8080
    upstream = read.hostname == "api.security.microsoft.com" and port in (None, 443)
    assert read.scheme.lower() in ("http", "https")
    assert own or (upstream and read.scheme.lower() == "https"), target
