"""Tests for the reference table of proxy.reference: every entry on a real route, found for its own
requests, every Defender route covered, and each entry's source page named."""

from __future__ import annotations

import inspect
import re

import pytest

from proxy import reference
from proxy.catalogue import ALL, CATALOGUES, DEFENDER, RouteSpec
from proxy.reference import ENDPOINTS, REFERENCE, Endpoint, Param, Reference
from proxy.routing import Router

_PERMISSION = re.compile(r"^[A-Za-z]+\.[A-Za-z]+(\.[A-Za-z]+)?$")
_SAMPLE = "sample"


def _example(pattern: str) -> tuple[str, str]:
    """A concrete request for a pattern: each ``{x}`` and a final ``**`` a sample segment, a glob
    ``*Export`` as ``machinesExport``; method ``*`` as GET."""
    method, _, path = pattern.partition(" ")
    segments = []
    for segment in path.strip("/").split("/"):
        if segment == "**" or segment.startswith("{"):
            segments.append(_SAMPLE)
        else:
            segments.append(segment.replace("*", "machines"))
    return ("GET" if method == "*" else method), "/" + "/".join(segments)


def _examples(endpoint: Endpoint) -> list[tuple[str, str]]:
    return [_example(pattern) for pattern in endpoint.match]


def _id(endpoint: Endpoint) -> str:
    return endpoint.match[0]


def test_example_builds_a_request_from_each_kind_of_segment() -> None:
    """The test's own example builder fills ids, globs and tails as the tests below assume."""
    assert _example("POST /api/machines/{id}/isolate") == ("POST", "/api/machines/sample/isolate")
    assert _example("GET /api/machines/*Export/**") == (
        "GET",
        "/api/machines/machinesExport/sample",
    )
    assert _example("* /v1.0/security/**") == ("GET", "/v1.0/security/sample")


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=_id)
def test_route_is_a_catalogue_route(endpoint: Endpoint) -> None:
    """Every entry names a route of the built-in catalogues."""
    assert endpoint.route in {spec.name for spec in CATALOGUES[ALL]}


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=_id)
def test_examples_route_to_the_entry_and_its_route(endpoint: Endpoint) -> None:
    """A request of each pattern is charged to the entry's route and finds that very entry."""
    router = Router(CATALOGUES[ALL])
    for method, path in _examples(endpoint):
        assert router.match(method, path).name == endpoint.route, path
        assert REFERENCE.find(method, path) is endpoint, path


@pytest.mark.parametrize(
    ("route", "pattern"),
    [(spec.name, pattern) for spec in CATALOGUES[DEFENDER] for pattern in spec.match],
)
def test_every_defender_pattern_is_covered(route: str, pattern: str) -> None:
    """Each pattern of each Defender route matches a request of some entry of that route."""
    alone = Router([RouteSpec("alone", (pattern,), ())])
    # A final ** also matches nothing at all; only a request with something in its place shows
    # that the paths below are covered, not just the path above them.
    depth = len(_example(pattern)[1].split("/")) if pattern.endswith("/**") else 0
    assert any(
        alone.match(method, path).name == "alone" and len(path.split("/")) >= depth
        for endpoint in ENDPOINTS
        if endpoint.route == route
        for method, path in _examples(endpoint)
    )


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=_id)
def test_permissions_are_named_like_permissions(endpoint: Endpoint) -> None:
    """Every entry accepts some permission, each spelt Word.Word[.Word], none twice."""
    assert endpoint.permissions
    assert all(_PERMISSION.match(name) for name in endpoint.permissions), endpoint.permissions
    assert len(set(endpoint.permissions)) == len(endpoint.permissions)


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=_id)
def test_body_names_are_unique_ignoring_case(endpoint: Endpoint) -> None:
    """No entry documents two body parameters whose names differ only in case."""
    names = [param.name.casefold() for param in endpoint.body]
    assert len(set(names)) == len(names)
    assert all(param.name and "!" not in param.name for param in endpoint.body)


def test_every_entry_names_its_source_page() -> None:
    """Each ``Endpoint(`` in the module source has a learn.microsoft.com comment right above it."""
    lines = inspect.getsource(reference).splitlines()
    calls = [index for index, line in enumerate(lines) if re.search(r"\bEndpoint\(", line)]
    assert len(calls) == len(ENDPOINTS)
    for index in calls:
        above = index - 1
        comments = []
        while above >= 0 and lines[above].lstrip().startswith("#"):
            comments.append(lines[above].strip())
            above -= 1
        assert any(text.startswith("# learn.microsoft.com/") for text in comments), lines[index]


def test_required_marks_and_exact_case() -> None:
    """Body parameters keep the page's case and its required marks (``!``)."""
    isolate = REFERENCE.find("POST", "/api/machines/abc/isolate")
    assert isolate is not None
    assert isolate.body == (Param("Comment", True), Param("IsolationType", False))
    submit = REFERENCE.find("POST", "/api/indicators")
    assert submit is not None
    assert Param("indicatorValue", True) in submit.body
    assert Param("expirationTime", False) in submit.body


def test_relations_of_one_route_have_their_own_permissions() -> None:
    """Two relations charged to machines.related are told apart, with their own permissions."""
    alerts = REFERENCE.find("GET", "/api/machines/abc/alerts")
    users = REFERENCE.find("GET", "/api/machines/abc/logonusers")
    assert alerts is not None
    assert users is not None
    assert alerts.route == users.route == "machines.related"
    assert alerts.permissions[0] == "Alert.Read.All"
    assert users.permissions == ("User.Read.All",)


def test_find_uses_the_canonical_form() -> None:
    """Spellings the router holds equal (/api/v1.0, case, namespaces, /beta) find one entry."""
    isolate = REFERENCE.find("POST", "/api/machines/abc/isolate")
    assert REFERENCE.find("POST", "/API/v1.0/Machines('abc')/Isolate") is isolate
    hunting = REFERENCE.find("POST", "/v1.0/security/runHuntingQuery")
    assert hunting is not None
    assert hunting.route == "graph.runHuntingQuery"
    assert REFERENCE.find("POST", "/beta/security/microsoft.graph.security.runHuntingQuery") is (
        hunting
    )
    found = REFERENCE.find("GET", "/api/machines/findbyip(ip='10.1.1.1',timestamp=2024-01-01)")
    assert found is not None
    assert found.route == "machines.find"


def test_unknown_endpoints_are_not_found() -> None:
    """A request the table does not document, or a documented path with another method, is None."""
    assert REFERENCE.find("GET", "/api/things") is None
    assert REFERENCE.find("DELETE", "/api/machines/abc/isolate") is None
    assert REFERENCE.find("POST", "/v1.0/$batch") is None


def test_first_entry_wins() -> None:
    """Of two entries matching a request, the earlier one is found."""
    specific = Endpoint("machines.related", ("GET /api/machines/{id}/alerts",), ("Alert.Read.All",))
    general = Endpoint("machines.related", ("GET /api/machines/{id}/{relation}",), ("X.Read.All",))
    assert Reference((specific, general)).find("GET", "/api/machines/a/alerts") is specific
    assert Reference((general, specific)).find("GET", "/api/machines/a/alerts") is general
