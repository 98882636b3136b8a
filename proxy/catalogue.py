"""The built-in catalogue of Defender API routes and their documented limits, as data.

Each entry names a family of requests (the ``route`` metric label and the unit of quota) and the
limits the Defender documentation gives for it. Figures are the documented ones; where pages
disagree the stricter figure is used. The order matters: the first entry whose pattern matches a
request wins, so specific patterns come before general ones.

Pattern syntax (see ``routing``): ``METHOD /path``, method ``*`` for any; ``{name}`` is exactly one
path segment; a segment with ``*`` is a glob within one segment; a final ``**`` is any rest of the
path. Literal segments match case-insensitively and also match an OData call suffix, so
``findbyip`` matches ``findbyip(ip='10.1.1.1',timestamp=…)``. A leading ``/api/`` also matches
``/api/v1.0/``.
"""

from __future__ import annotations

from dataclasses import dataclass
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

# (name, patterns, limits) — the documented rate-limit table of the Defender API, in match order.
_TABLE: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
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
    # Microsoft Graph security.
    (
        "graph.runHuntingQuery",
        ("POST /v1.0/security/runHuntingQuery", "POST /beta/security/runHuntingQuery"),
        ("45/1m",),
    ),
    # A JSON batch is never charged itself: each request inside it is, on its own route
    # (proxy.batch); the figure is Graph's, for the catalogue's table only.
    ("graph.batch", ("POST /v1.0/$batch", "POST /beta/$batch"), ("150/1m",)),
    ("graph.security", ("* /v1.0/security/**", "* /beta/security/**"), ("150/1m",)),
)

#: The name of the route every unmatched request falls into.
OTHER = "other"


def _build() -> tuple[RouteSpec, ...]:
    return tuple(
        RouteSpec(name, patterns, tuple(parse_limit(text) for text in limits))
        for name, patterns, limits in _TABLE
    )


CATALOGUE: tuple[RouteSpec, ...] = _build()

#: The Defender routes (paths under ``/api``), the Graph security routes (``/v1.0``, ``/beta``),
#: and both: the route table one upstream serves is one of these, by name.
CATALOGUES: dict[str, tuple[RouteSpec, ...]] = {
    "defender": tuple(
        s for s in CATALOGUE if all(m.split()[1].startswith("/api/") for m in s.match)
    ),
    "graph": tuple(
        s for s in CATALOGUE if not any(m.split()[1].startswith("/api/") for m in s.match)
    ),
    "all": CATALOGUE,
}

# Graph is one host; every other Microsoft host the docs list serves the Defender API.
_GRAPH_HOSTS = frozenset({"graph.microsoft.com", "graph.microsoft.us", "dod-graph.microsoft.us"})
_DEFENDER_DOMAINS = (
    ".security.microsoft.com",
    ".securitycenter.microsoft.com",
    ".securitycenter.windows.com",
    ".securitycenter.microsoft.us",
    ".security.microsoft.us",
)


def catalogue_for_origin(origin: str) -> str:
    """The catalogue an upstream serves when the config names none: by the origin's host.

    A host that is neither Graph nor a Defender host (a test double, an internal gateway) gets
    ``all``, the table every upstream had before there were several.
    """
    host = urlsplit(origin).hostname or ""
    if host in _GRAPH_HOSTS:
        return "graph"
    if f".{host}".endswith(_DEFENDER_DOMAINS):
        return "defender"
    return "all"


OTHER_ROUTE = RouteSpec(OTHER, (), tuple(parse_limit(text) for text in DEFAULT_LIMITS))
