"""Tests for proxy.canonical and the router on top of it: every spelling the API reads as one
endpoint lands on one route, ``%2F`` stays in its segment, and unknown endpoints fall into
bounded path families."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.canonical import FAMILY_DEPTH, PLACEHOLDER, canonical, canonical_path, family
from proxy.catalogue import CATALOGUE, OTHER, RouteSpec
from proxy.routing import Router

ROUTER = Router()
PACKAGE = "machineactions.getPackageUri"

# (method, spelling, route): each row a spelling the API reads as the route's endpoint.
SPELLINGS: list[tuple[str, str, str]] = [
    ("GET", "//api/machines", "machines.list"),
    ("GET", "/api//machines/1e5a2b", "machines.get"),
    ("POST", "/api//machines/1e5a2b//isolate", "machines.isolate"),
    ("GET", "/api/machineactions/7f3c/getPackageUri/", PACKAGE),
    ("GET", "/api/machineactions/7f3c/getPackageUri//", PACKAGE),
    ("GET", "/api/machineactions('7f3c')/getPackageUri", PACKAGE),
    ("GET", "/api/machineactions(7f3c)/getPackageUri", PACKAGE),
    ("GET", "/api/machineactions(id='7f3c')/getPackageUri", PACKAGE),
    ("POST", "/api/machines(Id='abc')/isolate", "machines.isolate"),
    ("GET", "/api/v1.0/machineactions('7f3c')/getPackageUri/", PACKAGE),
    ("GET", "/api/%6Dachineactions/7f3c/getPackage%55ri", PACKAGE),
    ("GET", "/api/machineactions;x=1/7f3c/getPackageUri", PACKAGE),
    ("GET", "/api/machineactions/7f3c;v=2/getPackageUri;a;b", PACKAGE),
    ("POST", "/api/machines;x=1/abc/isolate", "machines.isolate"),
    ("POST", "/api/machines(abc)/isolate", "machines.isolate"),
    ("GET", "/api/machines/findbyip(ip='10.1.1.1',timestamp=2024-05-02T10:11:12Z)", "machines.find"),
    ("GET", "/api/machineactions/7f3c/GetLiveResponseResultDownloadLink(index=0)", "machineactions.liveResponseResult"),
    ("POST", "/v1.0/security/microsoft.graph.security.runHuntingQuery", "graph.runHuntingQuery"),
    ("POST", "/v1.0/security/microsoft.graph.runHuntingQuery", "graph.runHuntingQuery"),
    ("POST", "/beta/security/Microsoft.Graph.Security.RunHuntingQuery/", "graph.runHuntingQuery"),
    ("POST", "/beta/security/runHuntingQuery", "graph.runHuntingQuery"),
    ("GET", "/beta/security/alerts_v2", "graph.security"),
    ("GET", "//v1.0//security//incidents('12')", "graph.security"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "route"), SPELLINGS)
def test_spelling_lands_on_its_route(method: str, path: str, route: str) -> None:
    """A spelling the API reads as one endpoint is named by that endpoint's route."""
    assert ROUTER.match(method, path).name == route


@pytest.mark.parametrize(
    ("path", "form"),
    [
        ("/api/machines/a%2Fb/isolate", "/api/machines/a%252fb/isolate"),
        ("/api/machines/a%2fb", "/api/machines/a%252fb"),
        ("/api/machines/a%3Bb", "/api/machines/a%253bb"),
        ("/api/machines/a%252Fb", "/api/machines/a%252fb"),
        ("/api/machines/%2F", "/api/machines/%252f"),
    ],
)
def test_encoded_slash_and_semicolon_stay_in_their_segment(path: str, form: str) -> None:
    """%2F and %3B are data: they never split a segment nor start its parameters."""
    assert canonical_path(path) == form


def test_encoded_slash_cannot_reach_another_route() -> None:
    """An id holding %2F is still one id: the request is not moved to a deeper route."""
    assert ROUTER.match("GET", "/api/machines/x%2Fvulnerabilities").name == "machines.get"
    assert ROUTER.match("POST", "/api/machines/x%2F..%2Fy/isolate").name == "machines.isolate"


def test_odata_call_is_not_a_key() -> None:
    """Parentheses with a '=' or nothing inside are a call on the segment, never a key."""
    assert canonical("/api/machines/findbyip(ip='1')").segments == [
        "api",
        "machines",
        "findbyip(ip='1')",
    ]
    assert canonical("/x/f()").segments == ["x", "f()"]
    assert canonical("/x/(y)").segments == ["x", "(y)"]
    assert canonical("/x/f('')").segments == ["x", "f", "''"]  # a key, but never an empty segment


def test_beta_is_folded_only_as_the_first_segment() -> None:
    """/beta is /v1.0; a segment called beta elsewhere is itself."""
    assert canonical("/beta/security").segments == ["v1.0", "security"]
    assert canonical("/api/beta").segments == ["api", "beta"]


def test_segments_given_are_bounded() -> None:
    """Past ``most`` segments the rest is not spelled out, only known to be there."""
    found = canonical("/a" * 100, 3)
    assert 3 < len(found.segments) <= 5


def test_newline_past_the_segments_given_ends_no_tail() -> None:
    """A newline in the part not spelled out is past every pattern, so '**' does not span it."""
    assert canonical("/a/b/c/d%0A", 1).newline > 1_000
    assert canonical("/a%0A/b", 5).newline == 0
    assert canonical("/a/b", 5).newline == -1


# --- random spellings of every catalogue pattern -------------------------------------------------

_CASES: list[Callable[[str], str]] = [str, str.upper, str.lower, str.swapcase]
_UNRESERVED = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")


@st.composite
def _spelling(draw: st.DrawFn, pattern: str) -> tuple[str, str, str]:
    """(method, plain path, a random spelling of it): the pattern's parameters filled with ids,
    then case, /api/v1.0, /beta, slashes, escapes, ;params, OData keys and Graph namespaces."""
    method, _, path = pattern.partition(" ")
    if method == "*":
        method = draw(st.sampled_from(["GET", "POST", "PATCH", "DELETE"]))
    texts = [t for t in path.split("/") if t]
    filled: list[tuple[str, bool]] = []  # (text, is an id)
    for text in texts:
        if text == "**":
            filled += [(str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1)))), True)] * draw(
                st.integers(0, 2)
            )
        elif text.startswith("{"):
            filled.append(
                (draw(st.sampled_from(["7f3c2b1a", "1e5a2b3c4d5e6f", "da637_-96", "42"])), True)
            )
        else:
            filled.append(
                (text.replace("*", draw(st.sampled_from(["Software", "Info", ""]))), False)
            )
    plain = "/" + "/".join(text for text, _ in filled)
    out: list[str] = []
    for index, (text, is_id) in enumerate(filled):
        if is_id and out and not out[-1].endswith(")") and draw(st.booleans()):
            quoted = draw(st.sampled_from(["'{}'", "{}"])).format(text)
            out[-1] += f"({quoted})"  # machineactions('x'): the key on the collection
            continue
        if not is_id and index > 0 and draw(st.integers(0, 3)) == 0:
            text = draw(st.sampled_from(["microsoft.graph.", "microsoft.graph.security."])) + text
        text = "".join(
            f"%{ord(char):02X}" if char in _UNRESERVED and draw(st.integers(0, 7)) == 0 else char
            for char in draw(st.sampled_from(_CASES))(text)
        )
        out.append(text)
    for index in range(len(out)):
        if draw(st.integers(0, 4)) == 0:
            out[index] += draw(st.sampled_from([";x=1", ";", ";a=b;c"]))
    if out and out[0].lower() == "api" and draw(st.booleans()):
        out.insert(1, draw(st.sampled_from(["v1.0", "V1.0"])))
    if out and out[0] == "v1.0" and draw(st.booleans()):
        out[0] = draw(st.sampled_from(["beta", "BETA"]))
    seps = [draw(st.sampled_from(["/", "/", "/", "//", "///"])) for _ in out]
    spelled = "".join(sep + text for sep, text in zip(seps, out, strict=True))
    spelled += draw(st.sampled_from(["", "", "/", "//"]))
    return method, plain, spelled or "/"


_PATTERNS = [(spec, p) for spec in CATALOGUE for p in spec.match]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), chosen=st.sampled_from(_PATTERNS))
def test_every_spelling_of_a_catalogue_pattern_matches_its_route(
    data: st.DataObject, chosen: tuple[RouteSpec, str]
) -> None:
    """Random spellings (all the folds at once) of every pattern of every route match that route."""
    spec, pattern = chosen
    method, plain, spelled = data.draw(_spelling(pattern))
    assert ROUTER.match(method, plain) is spec, plain
    assert ROUTER.match(method, spelled) is spec, spelled


@pytest.mark.parametrize("spec", CATALOGUE, ids=lambda spec: spec.name)
def test_every_catalogue_route_has_its_spellings_tested(spec: RouteSpec) -> None:
    """The property above draws from every pattern of every route."""
    assert {p for s, p in _PATTERNS if s is spec} == set(spec.match)


# --- path families of unknown endpoints ----------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/things", "/api/things"),
        ("/api/v1.0/things", "/api/things"),
        ("/API/Things/", "/api/things"),
        ("/api/things/de305d54-75b4-431b-adb2-eb6b9e546014", "/api/things/*"),
        ("/api/things('de305d54')/run", "/api/things/*/run"),
        ("/api/things/12/run", "/api/things/*/run"),
        ("/api/things/10.1.1.1/run", "/api/things/*/run"),
        ("/api/things/example.com/run", "/api/things/*/run"),
        ("/api/things/" + "a" * 65, "/api/things/*"),
        ("/api/things/deadbeefdeadbeef", "/api/things/*"),
        ("/api/things/da637551227677560813_-961444813", "/api/things/*"),
        ("/v1.0/things/alerts_v3", "/v1.0/things/alerts_v3"),
        ("/beta/things", "/v1.0/things"),
        ("/api/things/run(x=1)", "/api/things/run()"),
        ("/a/b/c/d/e/f/g/h", "/a/b/c/d/e/f/**"),
        ("/", "/"),
    ],
)
def test_family_collapses_ids(path: str, expected: str) -> None:
    """Ids of every shape become one placeholder; names, versions and calls stay; depth is bounded."""
    assert ROUTER.route("GET", path).family == expected


def test_family_only_for_other() -> None:
    """A catalogue route has no family; ``other`` always has one when the path is a path."""
    assert ROUTER.route("GET", "/api/machines").family == ""
    assert ROUTER.route("DELETE", "/api/machines").family == "/api/machines"
    assert ROUTER.route("GET", "api/machines").family == ""
    assert ROUTER.route("PROPFIND", "/x/1").family == "/x/*"


@settings(max_examples=300, deadline=None)
@given(path=st.text(max_size=200).map(lambda text: "/" + text))
def test_family_is_bounded(path: str) -> None:
    """Any path's family has at most FAMILY_DEPTH + 1 segments, each short and without braces."""
    routed = ROUTER.route("GET", path)
    if routed.spec.name != OTHER:
        return
    parts = routed.family.split("/")[1:]
    assert len(parts) <= FAMILY_DEPTH + 1
    assert all(len(part) <= 66 and "{" not in part and "}" not in part for part in parts)
    assert family(canonical(path).segments) == routed.family


def test_placeholder_is_no_name() -> None:
    """The placeholder is not a name a segment keeps, so no endpoint shares its family by name."""
    assert ROUTER.route("GET", f"/api/{PLACEHOLDER}").family == f"/api/{PLACEHOLDER}"
    assert ROUTER.route("GET", "/api/a*b").family == f"/api/{PLACEHOLDER}"
