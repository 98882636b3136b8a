"""Tests for proxy.routing and proxy.catalogue: every documented route, pattern errors, bounded names."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.catalogue import CATALOGUE, OTHER, RouteSpec
from proxy.routing import PatternError, Router, compile_pattern
from proxy.units import Limit

ROUTER = Router()

FINDBYIP = "/api/machines/findbyip(ip='1.2.3.4',timestamp=2024-05-02T10:11:12Z)"

# (method, path, route): at least one row for every pattern of every catalogue entry.
ROUTES: list[tuple[str, str, str]] = [
    # Machines: literal sub-paths first.
    ("GET", FINDBYIP, "machines.find"),
    ("GET", "/api/machines/findbytag", "machines.find"),
    ("POST", "/api/machines/AddOrRemoveTagForMultipleMachines", "machines.tags"),
    ("POST", "/api/machines/1e5a2b/tags", "machines.tags"),
    ("GET", "/api/machines/SoftwareVulnerabilitiesByMachine", "machines.assessments"),
    ("GET", "/api/machines/SoftwareInventoryByMachine", "machines.assessments"),
    ("GET", "/api/machines/SecureConfigurationsAssessmentByMachine", "machines.assessments"),
    ("GET", "/api/machines/SoftwareVulnerabilityChangesByMachine", "machines.assessments"),
    ("GET", "/api/machines/SoftwareVulnerabilitiesExport", "machines.exports"),
    ("GET", "/api/machines/InfoGatheringExport", "machines.exports"),
    ("GET", "/api/machines/SoftwareInventoryExport/files/part-1", "machines.exports"),
    ("POST", "/api/machines/1e5a2b/isolate", "machines.isolate"),
    ("POST", "/api/machines/1e5a2b/unisolate", "machines.unisolate"),
    ("POST", "/api/machines/1e5a2b/restrictCodeExecution", "machines.restrictCodeExecution"),
    ("POST", "/api/machines/1e5a2b/unrestrictCodeExecution", "machines.unrestrictCodeExecution"),
    ("POST", "/api/machines/1e5a2b/runAntiVirusScan", "machines.runAntiVirusScan"),
    ("POST", "/api/machines/1e5a2b/StopAndQuarantineFile", "machines.StopAndQuarantineFile"),
    (
        "POST",
        "/api/machines/1e5a2b/collectInvestigationPackage",
        "machines.collectInvestigationPackage",
    ),
    ("POST", "/api/machines/1e5a2b/offboard", "machines.offboard"),
    ("POST", "/api/machines/1e5a2b/startInvestigation", "machines.startInvestigation"),
    ("POST", "/api/machines/1e5a2b/runliveresponse", "machines.runLiveResponse"),
    ("GET", "/api/machines/1e5a2b/vulnerabilities", "machines.vulnerabilities"),
    ("GET", "/api/machines", "machines.list"),
    ("GET", "/api/machines/1e5a2b", "machines.get"),
    ("PATCH", "/api/machines/1e5a2b", "machines.update"),
    ("POST", "/api/machines/1e5a2b/setDeviceValue", "machines.update"),
    ("GET", "/api/machines/1e5a2b/logonusers", "machines.related"),
    # Alerts.
    ("POST", "/api/alerts/batchUpdate", "alerts.batchUpdate"),
    ("POST", "/api/alerts/CreateAlertByReference", "alerts.createByReference"),
    ("GET", "/api/alerts", "alerts.list"),
    ("GET", "/api/alerts/da637", "alerts.get"),
    ("PATCH", "/api/alerts/da637", "alerts.update"),
    ("GET", "/api/alerts/da637/files", "alerts.related"),
    # Indicators.
    ("POST", "/api/indicators/import", "indicators.import"),
    ("POST", "/api/indicators/BatchDelete", "indicators.batchDelete"),
    ("GET", "/api/indicators", "indicators.list"),
    ("POST", "/api/indicators", "indicators.submit"),
    ("DELETE", "/api/indicators/995", "indicators.delete"),
    # Machine actions.
    ("GET", "/api/machineactions/7f3c/getPackageUri", "machineactions.getPackageUri"),
    (
        "GET",
        "/api/machineactions/7f3c/GetLiveResponseResultDownloadLink(index=0)",
        "machineactions.liveResponseResult",
    ),
    ("POST", "/api/machineactions/7f3c/cancel", "machineactions.cancel"),
    ("GET", "/api/machineactions", "machineactions.list"),
    ("GET", "/api/machineactions/7f3c", "machineactions.get"),
    # Entities.
    ("GET", "/api/files/4b6c2a", "files.get"),
    ("GET", "/api/files/4b6c2a/stats", "files.get"),
    ("GET", "/api/ips/10.1.1.1/stats", "ips.get"),
    ("GET", "/api/domains/example.com/machines", "domains.get"),
    ("GET", "/api/investigations", "investigations.get"),
    ("GET", "/api/investigations/42", "investigations.get"),
    ("GET", "/api/deviceavinfo", "deviceavinfo.list"),
    # Hunting.
    ("POST", "/api/advancedqueries/run", "advancedqueries.run"),
    ("POST", "/api/advancedhunting/run", "advancedhunting.run"),
    # Incidents.
    ("GET", "/api/incidents", "incidents"),
    ("GET", "/api/incidents/12", "incidents"),
    ("PATCH", "/api/incidents/12", "incidents"),
    # Microsoft Graph security.
    ("POST", "/v1.0/security/runHuntingQuery", "graph.runHuntingQuery"),
    ("POST", "/beta/security/runHuntingQuery", "graph.runHuntingQuery"),
    ("GET", "/v1.0/security/alerts_v2", "graph.security"),
    ("PATCH", "/beta/security/incidents/12", "graph.security"),
    ("GET", "/v1.0/security/runHuntingQuery", "graph.security"),
    # Prefixes, case, encodings and slashes.
    ("GET", "/api/v1.0/machines", "machines.list"),
    ("POST", "/api/v1.0/machines/1e5a2b/isolate", "machines.isolate"),
    ("GET", "/API/Machines", "machines.list"),
    ("GET", "/Api/V1.0/ALERTS/da637", "alerts.get"),
    ("post", "/api/machines/1e5a2b/isolate", "machines.isolate"),
    ("POST", "/api/machines/x/%69solate", "machines.isolate"),
    ("GET", "/api/machines/", "machines.list"),
    ("GET", "/api/machines/1e5a2b/", "machines.get"),
    ("HEAD", "/api/machines", "machines.list"),
    ("HEAD", "/api/alerts/da637", "alerts.get"),
    # Wrong method and unknown paths.
    ("DELETE", "/api/machines", "other"),
    ("GET", "/api/machines/1e5a2b/isolate", "machines.related"),
    ("PUT", "/api/alerts/da637", "other"),
    ("POST", "/api/machines", "other"),
    ("GET", "/api/nothing-here", "other"),
    ("GET", "/api/machines/1e5a2b/a/b", "other"),
    ("GET", "/", "other"),
    ("GET", "", "other"),
    ("GET", "api/machines", "other"),
    ("GET", "/api/v2.0/machines", "other"),
]


@pytest.mark.parametrize(("method", "path", "route"), ROUTES)
def test_route_of_request(method: str, path: str, route: str) -> None:
    """A request line is named by the first catalogue entry its method and path match."""
    assert ROUTER.match(method, path).name == route


def test_table_covers_every_catalogue_entry() -> None:
    """The table above names every catalogue route at least once, so none goes untested."""
    assert {spec.name for spec in CATALOGUE} <= {route for _, _, route in ROUTES}


def test_literal_sub_path_wins_over_id() -> None:
    """findbyip is the find route, while any other single segment is a machine id."""
    assert ROUTER.match("GET", FINDBYIP).name == "machines.find"
    assert ROUTER.match("GET", "/api/machines/findbyipx").name == "machines.get"


def test_odata_call_needs_parentheses() -> None:
    """An OData call suffix is accepted only in parentheses right after the literal segment."""
    assert ROUTER.match("GET", "/api/machines/findbyip(ip='1.2.3.4')").name == "machines.find"
    assert ROUTER.match("GET", "/api/machines/findbyip'1.2.3.4'").name == "machines.get"


def test_percent_decoding_keeps_the_route() -> None:
    """A fully percent-encoded literal matches the same route as its plain spelling."""
    encoded = "/api/%6Dachines/1e5a2b/%72unliveresponse"
    assert ROUTER.match("POST", encoded).name == "machines.runLiveResponse"


def test_names_are_catalogue_plus_other() -> None:
    """A router's name set is exactly its specs' names and ``other``."""
    assert ROUTER.names == {spec.name for spec in CATALOGUE} | {OTHER}


def test_empty_router_answers_other() -> None:
    """A router with no specs sends every request to ``other``."""
    router = Router(())
    assert router.match("GET", "/api/machines").name == OTHER
    assert router.names == {OTHER}


def test_custom_route_placed_first_wins() -> None:
    """A custom spec ahead of the catalogue takes its requests; the rest still route as before."""
    custom = RouteSpec("custom.isolate", ("POST /api/machines/{id}/isolate",), (Limit(1, 60.0),))
    router = Router((custom, *CATALOGUE))
    assert router.match("POST", "/api/machines/1e5a2b/isolate") is custom
    assert router.match("POST", "/api/machines/1e5a2b/unisolate").name == "machines.unisolate"
    assert "custom.isolate" in router.names
    assert ROUTER.match("POST", "/api/machines/1e5a2b/isolate").name == "machines.isolate"


def test_custom_route_placed_last_loses() -> None:
    """A custom spec after the catalogue never takes a request the catalogue already matches."""
    custom = RouteSpec("custom.isolate", ("POST /api/machines/{id}/isolate",), (Limit(1, 60.0),))
    router = Router((*CATALOGUE, custom))
    assert router.match("POST", "/api/machines/1e5a2b/isolate").name == "machines.isolate"


def test_any_method_pattern() -> None:
    """Method ``*`` in a pattern matches every method."""
    spec = RouteSpec("anything", ("* /custom/**",), (Limit(1, 1.0),))
    router = Router((spec,))
    for method in ("GET", "POST", "DELETE", "OPTIONS"):
        assert router.match(method, "/custom/a/b").name == "anything"
    assert router.match("GET", "/customs").name == OTHER


@pytest.mark.parametrize(
    "pattern",
    [
        pytest.param("/api/machines", id="missing-method"),
        pytest.param("GET", id="missing-path"),
        pytest.param("GET api/machines", id="path-without-slash"),
        pytest.param("FETCH /api/machines", id="unknown-method"),
        pytest.param("GET /api/**/machines", id="double-star-not-last"),
        pytest.param("GET /api/machines/x{id}", id="brace-inside-segment"),
        pytest.param("GET /api/machines/{id", id="unclosed-brace"),
        pytest.param("GET /api/{}", id="empty-param"),
        pytest.param("GET /api//machines", id="empty-segment"),
    ],
)
def test_bad_pattern_is_refused(pattern: str) -> None:
    """A pattern that cannot be compiled raises PatternError, a ValueError."""
    with pytest.raises(PatternError):
        compile_pattern(pattern)


def test_bad_pattern_fails_router_construction() -> None:
    """A router refuses to build from a spec with a bad pattern."""
    with pytest.raises(PatternError):
        Router((RouteSpec("bad", ("GET /a//b",), (Limit(1, 1.0),)),))


def test_lowercase_method_in_pattern_is_accepted() -> None:
    """The method of a pattern is case-insensitive."""
    assert compile_pattern("get /api/machines") == compile_pattern("GET /api/machines")


def test_catalogue_names_unique() -> None:
    """No two catalogue entries share a name, and none is called ``other``."""
    names = [spec.name for spec in CATALOGUE]
    assert len(names) == len(set(names))
    assert OTHER not in names


@pytest.mark.parametrize("spec", CATALOGUE, ids=lambda spec: spec.name)
def test_catalogue_route_has_limits(spec: RouteSpec) -> None:
    """Every catalogue route has at least one positive limit and at least one pattern."""
    assert spec.limits
    assert all(limit.count > 0 and limit.window > 0 for limit in spec.limits)
    assert spec.match


@settings(max_examples=300, deadline=None)
@given(method=st.text(max_size=12), path=st.text(max_size=80))
def test_match_never_raises_and_names_are_bounded(method: str, path: str) -> None:
    """Any method and path text give a route whose name is in the router's closed name set."""
    assert ROUTER.match(method, path).name in ROUTER.names


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.sampled_from(["/api/machines/", "/api/v1.0/alerts/", "/v1.0/security/", "/%"]),
    rest=st.text(alphabet=st.characters(codec="ascii"), max_size=40),
)
def test_match_names_bounded_for_near_misses(prefix: str, rest: str) -> None:
    """Paths that start like a real route still map into the closed name set."""
    assert ROUTER.match("GET", prefix + rest).name in ROUTER.names
