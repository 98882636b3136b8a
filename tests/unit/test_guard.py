"""Tests for proxy.guard: which request targets and body sizes are refused before forwarding."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.errors import ProxyError, RefusalError
from proxy.guard import MAX_PATH, check_body_size, upstream_target

UPSTREAM = "https://api.security.microsoft.com"


def refusal(method: str, target: str) -> RefusalError:
    with pytest.raises(RefusalError) as caught:
        upstream_target(method, target, UPSTREAM)
    return caught.value


def has_dot_segment(target: str) -> bool:
    path = target.partition("?")[0].partition("#")[0]
    return any(unquote(segment).partition(";")[0] in (".", "..") for segment in path.split("/"))


# --- origin-form ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/api/machines",
        "/api/machines/",
        "/api/machines?$filter=healthStatus%20eq%20'Active'&$top=10",
        "/api/files?path=C%3A%2FWindows%2Fsystem32",
        "/api/machines?next=/../../etc/passwd",
        "/api/machines?x=%2e%2e&y=\\",
        "/api/machines/findbyip(ip='1.2.3.4',timestamp=2024-05-02T10:11:12Z)",
        "/api/machines/..b",
        "/api/machines/b..",
        "/api/machines/...",
        "/api/machines/.hidden",
        "/api/machines/%2e%2e%2e",
        "/",
    ],
)
def test_origin_form_passes_byte_exact(target: str) -> None:
    """An acceptable origin-form target is returned exactly as received, query included."""
    assert upstream_target("GET", target, UPSTREAM) == target


# --- methods and forms refused ------------------------------------------------------------------


def test_connect_refused() -> None:
    """CONNECT is refused with 400 BadRequest whatever its target."""
    exc = refusal("CONNECT", "api.security.microsoft.com:443")
    assert (exc.status, exc.code) == (400, "BadRequest")


def test_connect_refused_even_with_origin_form() -> None:
    """CONNECT is refused even with a target that would otherwise pass."""
    assert refusal("CONNECT", "/api/machines").status == 400


def test_asterisk_form_refused() -> None:
    """The asterisk-form target (OPTIONS *) is refused with 400."""
    exc = refusal("OPTIONS", "*")
    assert (exc.status, exc.code) == (400, "BadRequest")


@pytest.mark.parametrize("target", ["api/machines", "", "example.com:443", "mailto:a@b"])
def test_target_not_a_path_refused(target: str) -> None:
    """A target that is neither origin-form nor absolute-form is refused with 400."""
    assert refusal("GET", target).status == 400


def test_refusal_is_a_proxy_error() -> None:
    """A refusal is part of the proxy's error hierarchy, so the handler answers it."""
    assert isinstance(refusal("CONNECT", "x:1"), ProxyError)


# --- absolute-form --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/api/machines",
        "http://api.security.microsoft.com/api/machines",
        "https://api.security.microsoft.com:8443/api/machines",
        "https://api.security.microsoft.com.evil.example/api/machines",
        "https://api-eu.securitycenter.microsoft.com/api/machines",
    ],
)
def test_absolute_form_for_another_origin_refused(target: str) -> None:
    """An absolute-form target naming any other scheme, host or port is refused with 400."""
    exc = refusal("GET", target)
    assert (exc.status, exc.code) == (400, "BadRequest")
    assert "another origin" in exc.message


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("https://api.security.microsoft.com/api/machines", "/api/machines"),
        ("https://api.security.microsoft.com:443/api/machines", "/api/machines"),
        ("https://API.Security.Microsoft.COM/api/alerts?$top=1", "/api/alerts?$top=1"),
        ("HTTPS://api.security.microsoft.com/api/alerts", "/api/alerts"),
        ("https://api.security.microsoft.com", "/"),
        ("https://api.security.microsoft.com?$top=1", "/?$top=1"),
    ],
)
def test_absolute_form_for_upstream_gives_origin_form(target: str, expected: str) -> None:
    """An absolute-form target naming the upstream itself is forwarded as its origin-form rest."""
    assert upstream_target("GET", target, UPSTREAM) == expected


def test_absolute_form_default_port_for_http_upstream() -> None:
    """For an http upstream, an explicit :80 is the same origin."""
    assert upstream_target("GET", "http://sim.local:80/api", "http://sim.local") == "/api"


@pytest.mark.parametrize(
    "target",
    [
        "https://user:secret@api.security.microsoft.com/api/machines",
        "https://user@api.security.microsoft.com/api/machines",
        "https://evil.example@api.security.microsoft.com/",
    ],
)
def test_absolute_form_with_userinfo_refused(target: str) -> None:
    """Credentials in an absolute-form target are refused, and the message does not echo them."""
    exc = refusal("GET", target)
    assert (exc.status, exc.code) == (400, "BadRequest")
    assert "secret" not in exc.message
    assert "credentials" in exc.message


def test_absolute_form_that_is_not_a_url_refused() -> None:
    """An absolute-form target whose authority does not parse is refused with 400."""
    assert refusal("GET", "https://[::1/api").status == 400


def test_absolute_form_rest_still_checked() -> None:
    """The path of an absolute-form target to the upstream is checked like an origin-form one."""
    assert refusal("GET", "https://api.security.microsoft.com/api/../admin").status == 400


# --- dot segments and separators --------------------------------------------------------------


@pytest.mark.parametrize("method", ["TRACE", "TRACK"])
def test_trace_refused(method: str) -> None:
    """TRACE and TRACK are refused with 400: the upstream would echo the request back."""
    exc = refusal(method, "/api/machines")
    assert (exc.status, exc.code) == (400, "BadRequest")
    assert method in exc.message


@pytest.mark.parametrize(
    "target",
    [
        "/api/machines/a..;b",
        "/api/machines/a..%3Bb",
        "/api/machines/..x",
        "/api/machines;v=1",
        "/api/x.;",
    ],
)
def test_names_with_dots_and_semicolons_pass(target: str) -> None:
    """Segments that merely contain dots or ';' (not a dot segment with parameters) pass."""
    assert upstream_target("GET", target, UPSTREAM) == target


@pytest.mark.parametrize(
    "target",
    [
        "/api/../admin",
        "/..",
        "/api/./machines",
        "/api/machines/.",
        "/api/machines/..",
        "/api/machines/../",
        "/api/machines/..?x=1",
        "/api/%2e%2e/admin",
        "/api/%2E%2E/admin",
        "/api/%2E./admin",
        "/api/.%2e/admin",
        "/api/%2e/admin",
        "/api/..;/admin",
        "/api/..;jsessionid=1/admin",
        "/api/.;x/machines",
        "/api/%2e%2e;/admin",
        "/api/..%3b/admin",
        "/api/..%3Bjsessionid=1/admin",
        "/api/%2e%2e%3b/admin",
        "/api/machines/%2E%2E%3B",
        "..",
    ],
)
def test_dot_segment_refused(target: str) -> None:
    """A path with a '.' or '..' segment, plain, percent-encoded or with ';' (or '%3B')
    parameters, is refused with 400."""
    if not target.startswith("/"):
        target = "https://api.security.microsoft.com/" + target
    exc = refusal("GET", target)
    assert (exc.status, exc.code) == (400, "BadRequest")
    assert "dot segments" in exc.message


@pytest.mark.parametrize(
    "target",
    [
        "/api/machines%2F1e5a2b",
        "/api/machines%2f1e5a2b",
        "/api/machines%5c1e5a2b",
        "/api/machines%5C1e5a2b",
        "/api/machines%001e5a2b",
        "/api/machines\\1e5a2b",
    ],
)
def test_encoded_separator_in_path_refused(target: str) -> None:
    """%2F, %5C, %00 or a backslash in the path is refused with 400."""
    exc = refusal("GET", target)
    assert (exc.status, exc.code) == (400, "BadRequest")
    assert "separators" in exc.message


# --- path length ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "/api/machines/" + "Export(" * 600,
        "/api/machines/" + "x" * MAX_PATH,
        "/api/machines/1e5a2b/isolate" + "/" * MAX_PATH,
        UPSTREAM + "/" + "a" * MAX_PATH + "?q=1",
    ],
)
def test_path_over_the_bound_refused(target: str) -> None:
    """A path longer than MAX_PATH is refused with 414 UriTooLong before it is routed."""
    exc = refusal("GET", target)
    assert (exc.status, exc.code) == (414, "UriTooLong")
    assert str(MAX_PATH) in exc.message


@pytest.mark.parametrize(
    "target",
    [
        "/" + "a" * (MAX_PATH - 1),
        "/api/machines/" + "%41" * ((MAX_PATH - 14) // 3),
        "/api/machines?$filter=" + "x" * (2 * MAX_PATH),
    ],
)
def test_path_at_the_bound_passes(target: str) -> None:
    """A path of up to MAX_PATH characters as sent passes, whatever the length of the query."""
    assert len(target.partition("?")[0]) <= MAX_PATH
    assert upstream_target("GET", target, UPSTREAM) == target


# --- body size ------------------------------------------------------------------------------------


def test_body_over_limit_refused() -> None:
    """A declared body one byte over the limit is refused with 413 PayloadTooLarge."""
    with pytest.raises(RefusalError) as caught:
        check_body_size(1025, 1024)
    assert (caught.value.status, caught.value.code) == (413, "PayloadTooLarge")
    assert "1025" in caught.value.message


@pytest.mark.parametrize("length", [None, 0, 1023, 1024])
def test_body_at_or_under_limit_allowed(length: int | None) -> None:
    """A declared body at or under the limit, or no declared length, is allowed."""
    check_body_size(length, 1024)  # raises RefusalError when refused


# --- properties -----------------------------------------------------------------------------------

_PREFIXES = st.sampled_from(
    ["", "/", "/api/", "https://", "http://", UPSTREAM, UPSTREAM + ":443", "https://[", "x://"]
)


@settings(max_examples=300, deadline=None)
@given(prefix=_PREFIXES, text=st.text(max_size=60), method=st.sampled_from(["GET", "CONNECT"]))
def test_upstream_target_returns_a_path_or_refuses(prefix: str, text: str, method: str) -> None:
    """Any target text gives an origin-form path or a RefusalError, never another exception."""
    try:
        target = upstream_target(method, prefix + text, UPSTREAM)
    except RefusalError:
        return
    assert target.startswith("/")


# '#' is left out: a dot segment before a fragment passes the guard (reported separately).
_NO_FRAGMENT = st.text(alphabet=st.characters(exclude_characters="#"), max_size=60)
_DOTTY = st.lists(
    st.sampled_from(["/", ".", "..", "%2e", "%2E", "?", "a", "%2f", "\\"]), max_size=12
).map("".join)


@settings(max_examples=300, deadline=None)
@given(prefix=_PREFIXES, text=st.one_of(_NO_FRAGMENT, _DOTTY))
def test_upstream_target_never_returns_a_dot_segment(prefix: str, text: str) -> None:
    """No target the guard lets through has a '.' or '..' path segment, even percent-encoded."""
    try:
        target = upstream_target("GET", prefix + text, UPSTREAM)
    except RefusalError:
        return
    assert not has_dot_segment(target)


@pytest.mark.parametrize("target", ["/api/x/..#f", "/api/x#frag", "/api/%2e%2e#x"])
def test_fragment_in_target_is_refused(target: str) -> None:
    """A '#' in the target is refused, so the checked path is always the path sent."""
    with pytest.raises(RefusalError) as caught:
        upstream_target("GET", target, "https://api.security.microsoft.com")
    assert caught.value.status == 400
