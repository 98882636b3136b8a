"""The built-in catalogues of routes and their documented limits, as data: Defender and Graph.

Each entry names a family of requests (the ``route`` metric label and the unit of quota) and the
limits the documentation gives for it. Figures are the documented ones; where pages disagree the
stricter figure is used. The order matters: the first entry whose pattern matches a request wins,
so specific patterns come before general ones.

``CATALOGUES`` holds them by name: ``defender`` (the Defender for Endpoint and Defender XDR API,
paths under ``/api``), ``graph`` (the Microsoft Graph security API, paths under ``/v1.0`` and
``/beta``) and ``all``, both at once, which never overlap. ``catalogue_for_origin`` picks one from
the upstream's host: ``all`` for a host of neither family (the simulator, a private mirror).

Pattern syntax (see ``routing``): ``METHOD /path``, method ``*`` for any; ``{name}`` is exactly one
path segment; a segment with ``*`` is a glob within one segment; a final ``**`` is any rest of the
path. Literal segments match case-insensitively and also match an OData call suffix, so
``findbyip`` matches ``findbyip(ip='10.1.1.1',timestamp=…)``. A leading ``/api/`` also matches
``/api/v1.0/``, and ``/v1.0/`` also ``/beta/``; requests are matched in their canonical form
(``proxy.canonical``: slashes, ``;params``, OData keys, Graph namespaces).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias
from urllib.parse import urlsplit

from proxy.units import Limit, parse_limit


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """A named family of Defender requests and its quota."""

    name: str
    match: tuple[str, ...]
    limits: tuple[Limit, ...]


#: The limits of a route the catalogue does not know, and of most documented endpoints.
DEFAULT_LIMITS = ("100/1m", "1500/1h")

_ACTIONS = (
    "isolate",
    "unisolate",
    "restrictCodeExecution",
    "unrestrictCodeExecution",
    "runAntiVirusScan",
    "StopAndQuarantineFile",
    "collectInvestigationPackage",
    "offboard",
)

_ASSESSMENTS = (
    "SoftwareVulnerabilitiesByMachine",
    "SoftwareInventoryByMachine",
    "SecureConfigurationsAssessmentByMachine",
    "SoftwareVulnerabilityChangesByMachine",
)

_Table: TypeAlias = tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]

# (name, patterns, limits) — the documented rate-limit table of the Defender API, in match order.
_DEFENDER: _Table = (
    # Machines: the literal sub-paths first, then the {id} forms.
    (
        "machines.find",
        ("GET /api/machines/findbyip", "GET /api/machines/findbytag"),
        DEFAULT_LIMITS,
    ),
    (
        "machines.tags",
        ("POST /api/machines/AddOrRemoveTagForMultipleMachines", "POST /api/machines/{id}/tags"),
        DEFAULT_LIMITS,
    ),
    (
        "machines.assessments",
        tuple(f"GET /api/machines/{a}" for a in _ASSESSMENTS),
        ("30/1m", "1000/1h"),
    ),
    (
        "machines.exports",
        ("GET /api/machines/*Export", "GET /api/machines/*Export/**"),
        ("5/1m", "20/1h"),
    ),
    *(
        (f"machines.{action}", (f"POST /api/machines/{{id}}/{action}",), DEFAULT_LIMITS)
        for action in _ACTIONS
    ),
    ("machines.startInvestigation", ("POST /api/machines/{id}/startInvestigation",), ("50/1h",)),
    ("machines.runLiveResponse", ("POST /api/machines/{id}/runliveresponse",), ("10/1m",)),
    ("machines.vulnerabilities", ("GET /api/machines/{id}/vulnerabilities",), ("50/1m", "1500/1h")),
    ("machines.list", ("GET /api/machines",), DEFAULT_LIMITS),
    ("machines.get", ("GET /api/machines/{id}",), DEFAULT_LIMITS),
    (
        "machines.update",
        ("PATCH /api/machines/{id}", "POST /api/machines/{id}/setDeviceValue"),
        DEFAULT_LIMITS,
    ),
    ("machines.related", ("GET /api/machines/{id}/{relation}",), DEFAULT_LIMITS),
    # Alerts.
    ("alerts.batchUpdate", ("POST /api/alerts/batchUpdate",), ("10/1m", "500/1h")),
    ("alerts.createByReference", ("POST /api/alerts/CreateAlertByReference",), ("15/1m",)),
    ("alerts.list", ("GET /api/alerts",), DEFAULT_LIMITS),
    ("alerts.get", ("GET /api/alerts/{id}",), DEFAULT_LIMITS),
    ("alerts.update", ("PATCH /api/alerts/{id}",), DEFAULT_LIMITS),
    ("alerts.related", ("GET /api/alerts/{id}/{relation}",), DEFAULT_LIMITS),
    # Indicators.
    ("indicators.import", ("POST /api/indicators/import",), ("30/1m",)),
    ("indicators.batchDelete", ("POST /api/indicators/BatchDelete",), ("30/1m", "1500/1h")),
    ("indicators.list", ("GET /api/indicators",), DEFAULT_LIMITS),
    ("indicators.submit", ("POST /api/indicators",), DEFAULT_LIMITS),
    ("indicators.delete", ("DELETE /api/indicators/{id}",), DEFAULT_LIMITS),
    # Machine actions.
    (
        "machineactions.getPackageUri",
        ("GET /api/machineactions/{id}/getPackageUri",),
        ("2/1m", "120/1h"),
    ),
    (
        "machineactions.liveResponseResult",
        ("GET /api/machineactions/{id}/GetLiveResponseResultDownloadLink",),
        DEFAULT_LIMITS,
    ),
    ("machineactions.cancel", ("POST /api/machineactions/{id}/cancel",), DEFAULT_LIMITS),
    ("machineactions.list", ("GET /api/machineactions",), DEFAULT_LIMITS),
    ("machineactions.get", ("GET /api/machineactions/{id}",), DEFAULT_LIMITS),
    # Entities.
    ("files.get", ("GET /api/files/{id}", "GET /api/files/{id}/{relation}"), DEFAULT_LIMITS),
    ("ips.get", ("GET /api/ips/{ip}/{relation}",), DEFAULT_LIMITS),
    ("domains.get", ("GET /api/domains/{domain}/{relation}",), DEFAULT_LIMITS),
    (
        "investigations.get",
        ("GET /api/investigations", "GET /api/investigations/{id}"),
        DEFAULT_LIMITS,
    ),
    ("deviceavinfo.list", ("GET /api/deviceavinfo",), ("30/1m", "1000/1h")),
    # Hunting: per tenant, and the one quota users hit most.
    ("advancedqueries.run", ("POST /api/advancedqueries/run",), ("45/1m", "1500/1h")),
    ("advancedhunting.run", ("POST /api/advancedhunting/run",), ("45/1m",)),
    # Incidents.
    (
        "incidents",
        ("GET /api/incidents", "GET /api/incidents/{id}", "PATCH /api/incidents/{id}"),
        ("50/1m", "1500/1h"),
    ),
)

# The Microsoft Graph security API, in match order. Graph's throttling page
# (learn.microsoft.com/graph/throttling-limits, "Security detections and incidents service
# limits") applies its limits to any request on /security, per app per tenant: 150/min for any
# operation on alert, securityActions and secureScore, 1000/min for tiIndicator, 10,000 per 10
# minutes (and 4 at once) for secureScore and secureScoreControlProfile; and ("Security eDiscovery
# service limits") 5/min for eDiscovery cases. A resource without its own figure (alerts_v2,
# incidents, threatIntelligence, attackSimulation, secureScores …) stays in graph.security's 150/1m:
# the page does not say whether the 150 of one row is shared by the resources it names, and
# giving each its own 150 could overrun a shared one. /beta is folded into /v1.0 by the router.
_GRAPH: _Table = (
    # learn.microsoft.com/graph/api/security-security-runhuntingquery and
    # learn.microsoft.com/defender-xdr/api-advanced-hunting: "at least 45 calls per minute per
    # tenant", scaling with tenant size; per tenant, like the Defender hunting routes.
    ("graph.runHuntingQuery", ("POST /v1.0/security/runHuntingQuery",), ("45/1m",)),
    # learn.microsoft.com/graph/throttling-limits: any operation on tiIndicator, 1000/min.
    ("graph.tiIndicators", ("* /v1.0/security/tiIndicators/**",), ("1000/1m",)),
    # learn.microsoft.com/graph/throttling-limits: any request on eDiscovery cases, 5/min
    # (/security/cases/ediscoveryCases in v1.0; the page names /security/eDiscoveryCases).
    (
        "graph.ediscovery",
        ("* /v1.0/security/cases/ediscoveryCases/**", "* /v1.0/security/ediscoveryCases/**"),
        ("5/1m",),
    ),
    # A JSON batch is never charged itself: each request inside it is, on its own route
    # (proxy.batch); the figure is Graph's, for the catalogue's table only.
    ("graph.batch", ("POST /v1.0/$batch",), ("150/1m",)),
    # learn.microsoft.com/graph/throttling-limits: the rest of /security (alerts, alerts_v2,
    # incidents, secureScores, secureScoreControlProfiles, securityActions, threatIntelligence,
    # attackSimulation …), 150 per minute per app per tenant. The catch-all: keep it last.
    ("graph.security", ("* /v1.0/security/**",), ("150/1m",)),
)

#: The name of the route every unmatched request falls into.
OTHER = "other"


#: The name of each catalogue ``CATALOGUES`` holds.
DEFENDER: Final = "defender"
GRAPH: Final = "graph"
ALL: Final = "all"

#: Hosts of the Defender API (docs/defender-api.md): every host under these domains whose name
#: has a label starting with "api" (api., us.api., api-eu., api-gcc. …).
_DEFENDER_DOMAINS: Final = (
    "security.microsoft.com",
    "securitycenter.microsoft.com",
    "securitycenter.windows.com",
    "security.microsoft.us",
    "securitycenter.microsoft.us",
)
#: Hosts of Microsoft Graph: global, US Government (L4 and DoD), China (21Vianet).
_GRAPH_HOSTS: Final = frozenset(
    ("graph.microsoft.com", "graph.microsoft.us", "dod-graph.microsoft.us",
     "microsoftgraph.chinacloudapi.cn")
)  # fmt: skip


def _build(table: _Table) -> tuple[RouteSpec, ...]:
    return tuple(
        RouteSpec(name, patterns, tuple(parse_limit(text) for text in limits))
        for name, patterns, limits in table
    )


def catalogue_for_origin(origin: str) -> str:
    """The name of the catalogue for an upstream origin (``https://host[:port]``): ``defender``
    for a Defender API host, ``graph`` for a Microsoft Graph host, else ``all``."""
    try:
        host = (urlsplit(origin).hostname or "").rstrip(".")
    except ValueError:
        return ALL
    if host in _GRAPH_HOSTS:
        return GRAPH
    for domain in _DEFENDER_DOMAINS:
        if host.endswith("." + domain):
            labels = host[: -len(domain) - 1].split(".")
            if any(label.startswith("api") for label in labels):
                return DEFENDER
    return ALL


_DEFENDER_ROUTES = _build(_DEFENDER)
_GRAPH_ROUTES = _build(_GRAPH)
#: The built-in catalogues by name; ``all`` is Defender's routes, then Graph's (their paths never
#: overlap: ``/api/…`` against ``/v1.0/…`` and ``/beta/…``).
CATALOGUES: Final[dict[str, tuple[RouteSpec, ...]]] = {
    DEFENDER: _DEFENDER_ROUTES,
    GRAPH: _GRAPH_ROUTES,
    ALL: (*_DEFENDER_ROUTES, *_GRAPH_ROUTES),
}
#: Every built-in route: the catalogue of a router or a config built without naming one.
CATALOGUE: tuple[RouteSpec, ...] = CATALOGUES[ALL]
OTHER_ROUTE = RouteSpec(OTHER, (), tuple(parse_limit(text) for text in DEFAULT_LIMITS))
