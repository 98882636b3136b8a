"""Tests for proxy.routing and proxy.catalogue: every documented route, pattern errors, bounded names,
the same answers as the regular expression the router replaced, and work that does not grow with
an adversarial path."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import canonical, routing
from proxy.canonical import canonical_path, fold
from proxy.catalogue import CATALOGUE, OTHER, RouteSpec
from proxy.guard import MAX_PATH
from proxy.routing import PatternError, Router, compile_pattern
from proxy.units import Limit
from tests.regex_router import RegexRouter

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
    ("POST", "/v1.0/$batch", "graph.batch"),
    ("POST", "/beta/%24batch", "graph.batch"),
    ("GET", "/v1.0/$batch", "other"),
    ("PATCH", "/beta/security/incidents/12", "graph.security"),
    ("GET", "/v1.0/security/runHuntingQuery", "graph.security"),
    ("GET", "/beta/security/tiIndicators", "graph.tiIndicators"),
    ("POST", "/beta/security/tiIndicators/submitTiIndicators", "graph.tiIndicators"),
    ("GET", "/v1.0/security/cases/ediscoveryCases", "graph.ediscovery"),
    ("POST", "/v1.0/security/cases/ediscoveryCases/7f3c/searches", "graph.ediscovery"),
    ("GET", "/beta/security/ediscoveryCases", "graph.ediscovery"),
    ("GET", "/v1.0/security/incidents", "graph.security"),
    ("GET", "/v1.0/security/secureScores", "graph.security"),
    ("GET", "/v1.0/security/threatIntelligence/hosts/contoso.com", "graph.security"),
    ("GET", "/v1.0/security/attackSimulation/simulations", "graph.security"),
    ("GET", "/v1.0/security/cases", "graph.security"),
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


# --- the same answers as the regular expression the router replaced ---------------------------

ORACLE = RegexRouter()


def _oracle(method: str, path: str, oracle: RegexRouter = ORACLE) -> RouteSpec:
    """The old expression's route for the canonical form of ``path``: folding spellings is new,
    matching the canonical form must still be what the expression did. A path of no segments is
    the empty path (where "/" would be one empty segment to the expression, which a glob matched)."""
    if path[:1] not in ("", "/"):
        return oracle.match(method, path)
    form = canonical_path(path)
    return oracle.match(method, "" if form == "/" else form)


DIFFERENTIAL = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# Characters that stress folding (ſ is an s, K the Kelvin sign a k, ı and İ are i to re.IGNORECASE),
# the OData call's parentheses, the newline that '**' never spans, and plain letters.
_CHARS = st.sampled_from([*"abkisXYZ09-_.,'=:$ ", *"ſKıİΣσςßẞé", "(", ")", "\n", "%", "%25"])
_TEXT = st.lists(_CHARS, max_size=10).map("".join)
_NONEMPTY = st.lists(_CHARS, min_size=1, max_size=10).map("".join)
_CASES: list[Callable[[str], str]] = [
    str,
    str.upper,
    str.lower,
    str.swapcase,
    lambda text: text.replace("s", "ſ").replace("k", "\u212a").replace("i", "ı"),
    lambda text: text.replace("I", "İ").replace("S", "ſ"),
]
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "get", "Post"]


@st.composite
def _catalogue_request(
    draw: st.DrawFn, specs: tuple[RouteSpec, ...] = CATALOGUE
) -> tuple[str, str]:
    """A method and a path built from one of the patterns: params filled in, then varied."""
    pattern = draw(st.sampled_from([p for spec in specs for p in spec.match]))
    method, _, path = pattern.partition(" ")
    segments = path.strip("/").split("/") if path.strip("/") else []
    filled: list[str] = []
    for segment in segments:
        if segment == "**":
            filled.extend(draw(st.lists(_TEXT, max_size=3)))
        elif segment.startswith("{"):
            filled.append(draw(_NONEMPTY))
        else:
            first, *rest = segment.split("*")
            filled.append(first + "".join(draw(_TEXT) + piece for piece in rest))
    if draw(st.booleans()) and filled:  # an OData call, or something like one
        at = draw(st.integers(0, len(filled) - 1))
        filled[at] += draw(st.sampled_from(["({})", "({}", "{})", "(({}))", "({})x"])).format(
            draw(_TEXT)
        )
    text = "/" + "/".join(filled)
    if text.lower().startswith("/api") and draw(st.booleans()):
        text = "/api/" + draw(st.sampled_from(["v1.0", "V1.0", "v1.0()", "v2.0"])) + text[4:]
    text = draw(st.sampled_from(_CASES))(text)
    text += draw(st.sampled_from(["", "", "/", "//", "/x", "\n"]))
    if draw(st.booleans()):
        text = quote(text, safe=draw(st.sampled_from(["/", "/()", "/abcdefghijklmnopqrstuvwxyz"])))
    if method == "*":
        method = draw(st.sampled_from([*_METHODS, "PROPFIND", "X", ""]))
    elif draw(st.integers(0, 3)) == 0:
        method = draw(st.sampled_from([*_METHODS, "PROPFIND", "poſt"]))
    return draw(st.sampled_from([method, method.lower()])), text


@DIFFERENTIAL
@given(request=_catalogue_request())
def test_router_answers_as_the_regular_expression_did(request: tuple[str, str]) -> None:
    """For paths built from the catalogue's patterns, the route is the old expression's for their
    canonical form."""
    method, path = request
    assert ROUTER.match(method, path) is _oracle(method, path)


_PATTERN_SEGMENTS = st.sampled_from(
    ["api", "API", "v1.0", "{id}", "*", "**", "a*", "*b", "a*b*c", "ab", "aſ", "(x)", "k", "K"]
)
_PATTERNS = st.builds(
    lambda method, segments, end: f"{method} /" + "/".join(segments) + end,
    st.sampled_from(["GET", "get", "POST", "*", "HEAD"]),
    st.lists(_PATTERN_SEGMENTS, max_size=4),
    st.sampled_from(["", "/", "/**"]),
)


@DIFFERENTIAL
@given(patterns=st.lists(_PATTERNS, min_size=1, max_size=5), data=st.data())
def test_custom_routes_answer_as_the_regular_expression_did(
    patterns: list[str], data: st.DataObject
) -> None:
    """Globs, '**', a bare '/', 'api' and first-entry-wins route as the old expression did."""
    specs = tuple(RouteSpec(f"r{i}", (p,), (Limit(1, 1.0),)) for i, p in enumerate(patterns))
    try:
        router = Router(specs)
    except PatternError:  # checked by the same code as before: see test_bad_pattern_is_refused
        return
    oracle = RegexRouter(specs)
    for _ in range(5):
        method, path = data.draw(_catalogue_request(specs) | st.tuples(st.just("GET"), _TEXT))
        assert router.match(method, path) is _oracle(method, path, oracle), (method, path)


def test_fold_is_the_case_equivalence_of_regular_expressions() -> None:
    """Two characters fold alike exactly when re.IGNORECASE holds them equal, for every cased one."""
    chars = (chr(code) for code in range(0x110000) if not 0xD800 <= code < 0xE000)
    cased = [c for c in chars if c.lower() != c or c.upper() != c or fold(c) != c]
    everything = "".join(cased)
    assert len(fold(everything)) == len(everything)
    classes: dict[str, set[str]] = {}
    for char in cased:
        classes.setdefault(fold(char), set()).add(char)
    for char in cased:
        equal = set(re.findall(re.escape(char), everything, re.IGNORECASE))
        assert equal == classes[fold(char)], char


# --- work that does not grow with the path ---------------------------------------------------------


_ROUTER_FILES = (routing.__file__, canonical.__file__)


def _routing_steps(method: str, path: str) -> tuple[int, list[str]]:
    """Python lines run inside proxy.routing and proxy.canonical by one ``match`` and one
    ``route`` of a router that has not seen the path before, and their regex calls."""
    router = Router()
    lines = 0
    regex_calls: list[str] = []

    def trace_lines(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal lines
        if event == "line":
            lines += 1
        return trace_lines

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        # Only the router's own frames: percent-decoding is the standard library's (linear) work.
        return trace_lines if frame.f_code.co_filename in _ROUTER_FILES else None

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        mine = frame.f_code.co_filename in _ROUTER_FILES
        if mine and event == "c_call" and isinstance(getattr(arg, "__self__", None), re.Pattern):
            regex_calls.append(arg.__qualname__)

    previous = sys.gettrace()
    sys.settrace(trace)
    sys.setprofile(profile)
    try:
        router.match(method, path)
        router.route(method, path)
    finally:
        sys.setprofile(None)
        sys.settrace(previous)
    return lines, regex_calls


@pytest.mark.parametrize(
    ("method", "prefix", "piece", "suffix"),
    [
        pytest.param("GET", "/api/machines/", "Export(", "", id="export-calls"),
        pytest.param("GET", "/api/machines/", "(", "", id="open-parentheses"),
        pytest.param("GET", "/api/machines/", "()", "", id="empty-calls"),
        pytest.param("GET", "/api/machines/", "x", "Export()", id="long-glob"),
        pytest.param("GET", "/api/machines/", "findbyip(", ")", id="call-of-calls"),
        pytest.param("GET", "/api", "/a", "", id="many-segments"),
        pytest.param("POST", "/v1.0/security", "/a", "", id="many-segments-under-**"),
        pytest.param("GET", "/api/machines/", "ſ", "", id="non-ascii"),
        pytest.param("GET", "/api/machines/", "%41", "/isolate", id="percent-escapes"),
        pytest.param("GET", "/api/machines", "//", "", id="repeated-slashes"),
        pytest.param("GET", "/api", "/;x", "", id="segments-of-params-only"),
        pytest.param("GET", "/api/machines/", "x;", "", id="matrix-params"),
        pytest.param("GET", "/api/machineactions", "('x')", "/getPackageUri", id="odata-keys"),
        pytest.param("POST", "/v1.0/security/", "microsoft.graph.", "x", id="namespaces"),
        pytest.param("GET", "/api/machines/", "%2F", "/isolate", id="escaped-slashes"),
        pytest.param("GET", "/api/x", "/1", "", id="unmatched-families"),
    ],
)
def test_adversarial_path_costs_what_a_short_one_does(
    method: str, prefix: str, piece: str, suffix: str
) -> None:
    """Routing a 4 KiB adversarial path runs the router's code as often as a short one, no regex."""
    path = prefix + piece * ((MAX_PATH - len(prefix) - len(suffix)) // len(piece)) + suffix
    # Short, but past the longest literal of the catalogue, so that every comparison is the same.
    short = prefix + piece * (64 // len(piece)) + suffix
    assert MAX_PATH - len(piece) < len(path) <= MAX_PATH
    assert ROUTER.match(method, path) is _oracle(method, path)
    assert ROUTER.match(method, short) is _oracle(method, short)
    long_steps, long_regex = _routing_steps(method, path)
    short_steps, short_regex = _routing_steps(method, short)
    assert long_regex == short_regex == []
    # The same walk; only the short path is then remembered (two lines more), the long one never.
    assert short_steps - long_steps == 2


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(["GET", "get", "POST", "HEAD", "PATCH", "PURGE"]),
    paths=st.lists(
        st.sampled_from(["/api/machines", "/api/machines/abc", "/api/alerts/1/x", "/v1.0/x/y"])
        | st.text(alphabet="/abc%2F()'.", max_size=30),
        min_size=1,
        max_size=6,
    ),
)
def test_a_remembered_route_is_the_route_found(method: str, paths: list[str]) -> None:
    """Asked again, a router answers what a fresh router finds for the same method and path."""
    router = Router()
    for path in paths + paths:
        assert router.route(method, path) == Router().route(method, path)


def test_remembered_routes_stay_bounded() -> None:
    """However many distinct paths callers send, the router keeps at most a bounded few, short."""
    router = Router()
    for index in range(3 * routing._SEEN):
        router.route("GET", f"/api/machines/{index}")
    assert 0 < len(router._seen) <= routing._SEEN
    router.route("GET", "/api/machines/" + "a" * routing._SEEN_PATH)
    assert all(len(path) <= routing._SEEN_PATH for _, path in router._seen)
