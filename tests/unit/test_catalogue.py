"""Tests for the named catalogues of proxy.catalogue: which one an origin gets, that they never
overlap, and how the throttle section's overrides apply to each."""

from __future__ import annotations

import pytest

from proxy import app as wiring
from proxy.catalogue import (
    ALL,
    CATALOGUE,
    CATALOGUES,
    DEFENDER,
    GRAPH,
    OTHER,
    catalogue_for_origin,
)
from proxy.config import ConfigError, Settings, effective_routes, parse_settings, route_policies
from proxy.routing import Router
from proxy.throttle_config import Throttle


@pytest.mark.parametrize(
    ("origin", "catalogue"),
    [
        ("https://api.security.microsoft.com", DEFENDER),
        ("https://us.api.security.microsoft.com", DEFENDER),
        ("https://aea.api.security.microsoft.com:443", DEFENDER),
        ("https://api-eu.security.microsoft.com", DEFENDER),
        ("https://api.securitycenter.microsoft.com", DEFENDER),
        ("https://api-au.securitycenter.microsoft.com", DEFENDER),
        ("https://api.securitycenter.windows.com", DEFENDER),
        ("https://api-gcc.securitycenter.microsoft.us", DEFENDER),
        ("https://api-gov.security.microsoft.us", DEFENDER),
        ("https://API.Security.Microsoft.com.", DEFENDER),
        ("https://graph.microsoft.com", GRAPH),
        ("https://graph.microsoft.us", GRAPH),
        ("https://dod-graph.microsoft.us", GRAPH),
        ("https://microsoftgraph.chinacloudapi.cn", GRAPH),
        ("http://127.0.0.1:9000", ALL),
        ("https://mirror.example.net", ALL),
        ("https://security.microsoft.com", ALL),
        ("https://api.security.microsoft.com.example.net", ALL),
        ("https://graph.microsoft.com.example.net", ALL),
        ("https://[::1", ALL),
        ("", ALL),
    ],
)
def test_catalogue_for_origin(origin: str, catalogue: str) -> None:
    """Defender and Graph hosts get their own catalogue; any other origin, or none, gets both."""
    assert catalogue_for_origin(origin) == catalogue


def test_catalogues_are_named_and_all_is_both() -> None:
    """``all`` is Defender's routes then Graph's, and is the default catalogue."""
    assert set(CATALOGUES) == {DEFENDER, GRAPH, ALL}
    assert CATALOGUES[ALL] == CATALOGUES[DEFENDER] + CATALOGUES[GRAPH]
    assert CATALOGUES[ALL] == CATALOGUE
    assert all(spec.name.startswith("graph.") for spec in CATALOGUES[GRAPH])
    assert not any(spec.name.startswith("graph.") for spec in CATALOGUES[DEFENDER])
    assert {"graph.security", "graph.runHuntingQuery"} <= {s.name for s in CATALOGUES[GRAPH]}


def test_catalogues_never_overlap() -> None:
    """Defender patterns start with /api, Graph's with /v1.0: no request is matched by both."""
    for spec in CATALOGUES[DEFENDER]:
        assert all(p.partition(" ")[2].startswith("/api/") for p in spec.match), spec.name
    for spec in CATALOGUES[GRAPH]:
        assert all(p.partition(" ")[2].startswith("/v1.0/") for p in spec.match), spec.name


def test_each_catalogue_routes_only_its_api() -> None:
    """A Defender router sends Graph paths to other, and a Graph router Defender paths."""
    defender, graph = Router(CATALOGUES[DEFENDER]), Router(CATALOGUES[GRAPH])
    hunting = "/v1.0/security/microsoft.graph.security.runHuntingQuery"
    assert defender.match("POST", hunting).name == OTHER
    assert graph.match("POST", hunting).name == "graph.runHuntingQuery"
    assert graph.match("GET", "/api/machines").name == OTHER
    assert defender.match("GET", "/api/machines").name == "machines.list"


def _throttle(routes: list[dict[str, object]]) -> Throttle:
    return parse_settings({"throttle": {"routes": routes}}, "contoso.yaml", {}).throttle


def test_override_of_another_catalogues_route_is_left_out() -> None:
    """Overriding a Graph route is no error for a Defender catalogue: it is simply not there."""
    throttle = _throttle([{"name": "graph.security", "limits": ["10/1m"]}])
    routes = effective_routes(throttle, CATALOGUES[DEFENDER])
    assert routes == CATALOGUES[DEFENDER]
    graph = effective_routes(throttle, CATALOGUES[GRAPH])
    assert next(s.limits for s in graph if s.name == "graph.security")[0].count == 10
    assert set(route_policies(throttle, CATALOGUES[DEFENDER])) == Router(routes).names


def test_new_route_is_added_to_every_catalogue() -> None:
    """A route the config adds (with match and limits) is placed first whatever the catalogue."""
    throttle = _throttle([{"name": "contoso.x", "match": ["GET /x"], "limits": ["1/1s"]}])
    for name in (DEFENDER, GRAPH, ALL):
        assert effective_routes(throttle, CATALOGUES[name])[0].name == "contoso.x"


def test_unknown_route_without_match_is_still_an_error() -> None:
    """A name in no catalogue still needs match and limits."""
    with pytest.raises(ConfigError, match="not a catalogue route"):
        _throttle([{"name": "contoso.unknown", "limits": ["1/1s"]}])


@pytest.mark.parametrize(
    ("upstream", "catalogue"),
    [
        ("https://api.security.microsoft.com", DEFENDER),
        ("https://graph.microsoft.com", GRAPH),
        ("http://127.0.0.1:9000", ALL),
    ],
)
def test_app_routes_by_the_upstreams_catalogue(upstream: str, catalogue: str) -> None:
    """One upstream: the router and the quotas are built from the catalogue of its host."""
    (proxy,), _ = wiring.build(Settings(upstream=upstream))
    assert proxy.router.routes[:-1] == CATALOGUES[catalogue]
