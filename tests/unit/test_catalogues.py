"""Tests for the catalogues one upstream can serve, and the one chosen from an origin's host."""

from __future__ import annotations

from proxy.catalogue import CATALOGUES, catalogue_for_origin
from proxy.config import Throttle, effective_routes


def test_defender_and_graph_split_the_whole_catalogue() -> None:
    """Every route is in exactly one of defender and graph, and all is both."""
    defender = {spec.name for spec in CATALOGUES["defender"]}
    graph = {spec.name for spec in CATALOGUES["graph"]}
    assert not defender & graph
    assert defender | graph == {spec.name for spec in CATALOGUES["all"]}
    assert "advancedhunting.run" in defender
    assert "graph.runHuntingQuery" in graph


def test_the_documented_hosts_choose_their_catalogue() -> None:
    """The Defender hosts serve the defender catalogue and Graph's host the graph one."""
    assert catalogue_for_origin("https://api.security.microsoft.com") == "defender"
    assert catalogue_for_origin("https://eu.api.security.microsoft.com") == "defender"
    assert catalogue_for_origin("https://api.securitycenter.microsoft.com") == "defender"
    assert catalogue_for_origin("https://graph.microsoft.com") == "graph"


def test_effective_routes_keep_to_the_catalogue_given() -> None:
    """The route table of one catalogue holds none of another's routes."""
    names = {spec.name for spec in effective_routes(Throttle(), CATALOGUES["graph"])}
    assert names == {"graph.runHuntingQuery", "graph.security"}
