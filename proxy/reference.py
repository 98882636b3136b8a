"""What the API reference pages document for each endpoint: its permissions and its JSON body.

The quota catalogue (``proxy.catalogue``) groups requests by what Microsoft counts; this table
says what each endpoint needs, so an error can be explained: a 403 whose token lacks every
permission the endpoint accepts names the one it wants (``missing_role``), and a 400 on a body
the caller sent is compared with the documented parameters, whose names are case-sensitive
(``proxy.body_hints``).

Each ``Endpoint`` holds its patterns (the catalogue's pattern syntax, matched in the same
canonical form), the permissions of which any one suffices — the application permission of the
reference page first (the least privileged the page lists), then the others the page accepts,
application or delegated — and its documented body parameters with their exact case. The source
page is given in a comment above each entry, with any reading of an ambiguous page (the stricter
one is taken). An endpoint the table does not know gets no explanation beyond what its token says.

Every entry names the catalogue route its requests are charged to. A route that covers several
documented endpoints (``machines.related``: a machine's alerts, logon users, software …) has an
entry for each, since their permissions differ; the table is matched on its own, first entry
first, so an entry never stands behind a more general one. ``defender-proxy catalogue`` prints, for
each route, the least privileged permission of each of its endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from proxy.catalogue import RouteSpec
from proxy.routing import Router


@dataclass(frozen=True, slots=True)
class Param:
    """One documented body parameter: its exact name, and whether the page marks it required."""

    name: str
    required: bool = False


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One documented endpoint: the catalogue route it falls in, its patterns, the permissions of
    which any one suffices (least privileged first), and its JSON body's parameters."""

    route: str
    match: tuple[str, ...]
    permissions: tuple[str, ...]
    body: tuple[Param, ...] = ()

    @property
    def folds_case(self) -> bool:
        """Whether the API matches this endpoint's body names without regard to case. Microsoft
        Graph does: its own SDK sends ``query`` and ``timespan`` to runHuntingQuery, whose page
        writes ``Query`` and ``Timespan``. The Defender API's names are case-sensitive."""
        return self.match[0].partition(" ")[2].startswith("/v1.0/")


def _p(*names: str) -> tuple[Param, ...]:
    """Body parameters, as names or strings of names separated by spaces; a name ending in ``!``
    is required."""
    return tuple(
        Param(name.rstrip("!"), name.endswith("!")) for text in names for name in text.split()
    )


# The permission sets most pages share, each in the order the entries need: the least privileged
# application permission first, then the other application and the delegated ones.
_MACHINE_READ: Final = (
    "Machine.Read.All",
    "Machine.ReadWrite.All",
    "Machine.Read",
    "Machine.ReadWrite",
)
_MACHINE_WRITE: Final = ("Machine.ReadWrite.All", "Machine.ReadWrite")
_ALERT_READ: Final = ("Alert.Read.All", "Alert.ReadWrite.All", "Alert.Read", "Alert.ReadWrite")
_ALERT_WRITE: Final = ("Alert.ReadWrite.All", "Alert.ReadWrite")
_VULNERABILITY: Final = ("Vulnerability.Read.All", "Vulnerability.Read")
_SOFTWARE: Final = ("Software.Read.All", "Software.Read")
_INDICATORS: Final = ("Ti.ReadWrite", "Ti.ReadWrite.All")
_INCIDENT_READ: Final = (
    "Incident.Read.All",
    "Incident.ReadWrite.All",
    "Incident.Read",
    "Incident.ReadWrite",
)
_COMMENT: Final = _p("Comment!")
# Graph names one permission for both kinds; a page's "higher privileged" ones come after.
_SECURITY_ALERT_READ: Final = ("SecurityAlert.Read.All", "SecurityAlert.ReadWrite.All")
_SECURITY_INCIDENT_READ: Final = ("SecurityIncident.Read.All", "SecurityIncident.ReadWrite.All")
_SECURITY_EVENTS_READ: Final = ("SecurityEvents.Read.All", "SecurityEvents.ReadWrite.All")
_SECURITY_EVENTS_WRITE: Final = ("SecurityEvents.ReadWrite.All",)
_TI_INDICATORS: Final = ("ThreatIndicators.ReadWrite.OwnedBy",)
_EDISCOVERY_READ: Final = ("eDiscovery.Read.All", "eDiscovery.ReadWrite.All")
# The older eDiscovery pages list eDiscovery.Read.All for changes too ("from least to most
# privileged"); the stricter reading, kept here, is that a change needs ReadWrite.
_EDISCOVERY_WRITE: Final = ("eDiscovery.ReadWrite.All",)
_THREAT_INTELLIGENCE: Final = ("ThreatIntelligence.Read.All",)
_ATTACK_SIMULATION_READ: Final = ("AttackSimulation.Read.All", "AttackSimulation.ReadWrite.All")
_ATTACK_SIMULATION_WRITE: Final = ("AttackSimulation.ReadWrite.All",)


def _export(name: str) -> tuple[str, str]:
    """An export's patterns: the call, and the paths below it. The answer links the export's files,
    which the gateway serves as ``…/<name>/collection/<date>/files/<n>`` (seen in the wild, not on
    the page); they are charged as the export (the catalogue's ``*Export/**``), and are taken to
    need its permission, the stricter reading."""
    return (f"GET /api/machines/{name}", f"GET /api/machines/{name}/**")


# In match order, like the catalogue: the first entry whose pattern matches wins, so an entry for
# one relation of a route comes before any general one, and a literal before a {param}.
ENDPOINTS: Final[tuple[Endpoint, ...]] = (
    # ---- Defender for Endpoint: machines -------------------------------------------------------
    # learn.microsoft.com/defender-endpoint/api/find-machines-by-ip
    Endpoint("machines.find", ("GET /api/machines/findbyip",), _MACHINE_READ),
    # learn.microsoft.com/defender-endpoint/api/find-machines-by-tag
    Endpoint("machines.find", ("GET /api/machines/findbytag",), _MACHINE_READ),
    # learn.microsoft.com/defender-endpoint/api/find-machine-info-by-ip: the catalogue counts
    # find(timestamp=…,key=…) as machines.get; the page lists application permissions only.
    Endpoint("machines.get", ("GET /api/machines/find",), _MACHINE_READ[:2]),
    # learn.microsoft.com/defender-endpoint/api/add-or-remove-multiple-machine-tags
    Endpoint(
        "machines.tags",
        ("POST /api/machines/AddOrRemoveTagForMultipleMachines",),
        _MACHINE_WRITE,
        _p("Value!", "Action!", "MachineIds!"),
    ),
    # learn.microsoft.com/defender-endpoint/api/add-or-remove-machine-tags
    Endpoint(
        "machines.tags", ("POST /api/machines/{id}/tags",), _MACHINE_WRITE, _p("Value!", "Action!")
    ),
    # learn.microsoft.com/defender-endpoint/api/get-assessment-software-vulnerabilities
    Endpoint(
        "machines.assessments",
        ("GET /api/machines/SoftwareVulnerabilitiesByMachine",),
        _VULNERABILITY,
    ),
    # learn.microsoft.com/defender-endpoint/api/get-assessment-software-vulnerabilities (delta)
    Endpoint(
        "machines.assessments",
        ("GET /api/machines/SoftwareVulnerabilityChangesByMachine",),
        _VULNERABILITY,
    ),
    # learn.microsoft.com/defender-endpoint/api/get-assessment-software-inventory
    Endpoint("machines.assessments", ("GET /api/machines/SoftwareInventoryByMachine",), _SOFTWARE),
    # learn.microsoft.com/defender-endpoint/api/get-assessment-secure-config
    Endpoint(
        "machines.assessments",
        ("GET /api/machines/SecureConfigurationsAssessmentByMachine",),
        _VULNERABILITY,
    ),
    # The per-device assessments below have the same page limits (30/1m, 1000/1h) but are not in
    # the catalogue's assessment list, so the router counts them as machines.get.
    # learn.microsoft.com/defender-endpoint/api/get-assessment-non-cpe-software-inventory
    Endpoint(
        "machines.get", ("GET /api/machines/SoftwareInventoryNoProductCodeByMachine",), _SOFTWARE
    ),
    # learn.microsoft.com/defender-endpoint/api/get-assessment-browser-extensions
    Endpoint("machines.get", ("GET /api/machines/BrowserExtensionsInventoryByMachine",), _SOFTWARE),
    # learn.microsoft.com/defender-endpoint/api/export-certificate-inventory-assessment
    Endpoint("machines.get", ("GET /api/machines/certificateAssessmentByMachine",), _VULNERABILITY),
    # learn.microsoft.com/defender-endpoint/api/export-firmware-hardware-assessment
    Endpoint("machines.get", ("GET /api/machines/HardwareFirmwareInventoryByMachine",), _SOFTWARE),
    # learn.microsoft.com/defender-endpoint/api/export-security-baseline-assessment
    Endpoint(
        "machines.get",
        ("GET /api/machines/BaselineComplianceAssessmentByMachine",),
        ("SecurityBaselinesAssessment.Read.All", "SecurityBaselinesAssessment.Read"),
    ),
    # learn.microsoft.com/defender-endpoint/api/get-assessment-software-vulnerabilities (via files)
    Endpoint("machines.exports", _export("SoftwareVulnerabilitiesExport"), _VULNERABILITY),
    # learn.microsoft.com/defender-endpoint/api/get-assessment-software-inventory (via files)
    Endpoint("machines.exports", _export("SoftwareInventoryExport"), _SOFTWARE),
    # learn.microsoft.com/defender-endpoint/api/get-assessment-secure-config (via files)
    Endpoint("machines.exports", _export("SecureConfigurationsAssessmentExport"), _VULNERABILITY),
    # learn.microsoft.com/defender-endpoint/api/get-assessment-non-cpe-software-inventory (files)
    Endpoint("machines.exports", _export("SoftwareInventoryNonCpeExport"), _SOFTWARE),
    # learn.microsoft.com/defender-endpoint/api/get-assessment-browser-extensions (via files)
    Endpoint("machines.exports", _export("BrowserExtensionsInventoryExport"), _SOFTWARE),
    # learn.microsoft.com/defender-endpoint/api/export-certificate-inventory-assessment (via files)
    Endpoint("machines.exports", _export("certificateAssessmentExport"), _VULNERABILITY),
    # learn.microsoft.com/defender-endpoint/api/export-firmware-hardware-assessment (via files)
    Endpoint("machines.exports", _export("HardwareFirmwareInventoryExport"), _SOFTWARE),
    # learn.microsoft.com/defender-endpoint/api/export-security-baseline-assessment (via files): the
    # section gives no permissions; those of the JSON export above it are taken.
    Endpoint(
        "machines.exports",
        _export("BaselineComplianceAssessmentExport"),
        ("SecurityBaselinesAssessment.Read.All", "SecurityBaselinesAssessment.Read"),
    ),
    # learn.microsoft.com/defender-endpoint/api/get-assessment-information-gathering (also the
    # device health page's "via files" method)
    Endpoint("machines.exports", _export("InfoGatheringExport"), _VULNERABILITY),
    # learn.microsoft.com/defender-endpoint/api/isolate-machine
    Endpoint(
        "machines.isolate",
        ("POST /api/machines/{id}/isolate",),
        ("Machine.Isolate",),
        _p("Comment!", "IsolationType"),
    ),
    # learn.microsoft.com/defender-endpoint/api/unisolate-machine
    Endpoint(
        "machines.unisolate", ("POST /api/machines/{id}/unisolate",), ("Machine.Isolate",), _COMMENT
    ),
    # learn.microsoft.com/defender-endpoint/api/restrict-code-execution
    Endpoint(
        "machines.restrictCodeExecution",
        ("POST /api/machines/{id}/restrictCodeExecution",),
        ("Machine.RestrictExecution",),
        _COMMENT,
    ),
    # learn.microsoft.com/defender-endpoint/api/unrestrict-code-execution
    Endpoint(
        "machines.unrestrictCodeExecution",
        ("POST /api/machines/{id}/unrestrictCodeExecution",),
        ("Machine.RestrictExecution",),
        _COMMENT,
    ),
    # learn.microsoft.com/defender-endpoint/api/run-av-scan
    Endpoint(
        "machines.runAntiVirusScan",
        ("POST /api/machines/{id}/runAntiVirusScan",),
        ("Machine.Scan",),
        _p("Comment!", "ScanType!"),
    ),
    # learn.microsoft.com/defender-endpoint/api/stop-and-quarantine-file: the page also lists
    # Machine.Read.All and Machine.ReadWrite.All, read permissions no other remediation action
    # accepts; the stricter reading keeps only the action's own.
    Endpoint(
        "machines.StopAndQuarantineFile",
        ("POST /api/machines/{id}/StopAndQuarantineFile",),
        ("Machine.StopAndQuarantine",),
        _p("Comment!", "Sha1!"),
    ),
    # learn.microsoft.com/defender-endpoint/api/collect-investigation-package
    Endpoint(
        "machines.collectInvestigationPackage",
        ("POST /api/machines/{id}/collectInvestigationPackage",),
        ("Machine.CollectForensics",),
        _COMMENT,
    ),
    # learn.microsoft.com/defender-endpoint/api/offboard-machine-api
    Endpoint(
        "machines.offboard", ("POST /api/machines/{id}/offboard",), ("Machine.Offboard",), _COMMENT
    ),
    # learn.microsoft.com/defender-endpoint/api/initiate-autoir-investigation
    Endpoint(
        "machines.startInvestigation",
        ("POST /api/machines/{id}/startInvestigation",),
        _ALERT_WRITE,
        _COMMENT,
    ),
    # learn.microsoft.com/defender-endpoint/api/run-live-response: the page marks neither parameter
    # required; Commands is what the call runs, so the stricter reading requires it.
    Endpoint(
        "machines.runLiveResponse",
        ("POST /api/machines/{id}/runliveresponse",),
        ("Machine.LiveResponse",),
        _p("Commands!", "Comment"),
    ),
    # learn.microsoft.com/defender-endpoint/api/get-discovered-vulnerabilities
    Endpoint(
        "machines.vulnerabilities", ("GET /api/machines/{id}/vulnerabilities",), _VULNERABILITY
    ),
    # learn.microsoft.com/defender-endpoint/api/get-machines
    Endpoint("machines.list", ("GET /api/machines",), _MACHINE_READ),
    # learn.microsoft.com/defender-endpoint/api/get-machine-by-id
    Endpoint("machines.get", ("GET /api/machines/{id}",), _MACHINE_READ),
    # learn.microsoft.com/defender-endpoint/api/update-machine-method
    Endpoint(
        "machines.update",
        ("PATCH /api/machines/{id}",),
        _MACHINE_WRITE,
        _p("machineTags", "deviceValue"),
    ),
    # learn.microsoft.com/defender-endpoint/api/set-device-value
    Endpoint(
        "machines.update",
        ("POST /api/machines/{id}/setDeviceValue",),
        _MACHINE_WRITE,
        _p("DeviceValue!"),
    ),
    # learn.microsoft.com/defender-endpoint/api/get-machine-related-alerts
    Endpoint("machines.related", ("GET /api/machines/{id}/alerts",), _ALERT_READ),
    # learn.microsoft.com/defender-endpoint/api/get-machine-log-on-users
    Endpoint("machines.related", ("GET /api/machines/{id}/logonusers",), ("User.Read.All",)),
    # learn.microsoft.com/defender-endpoint/api/get-installed-software
    Endpoint("machines.related", ("GET /api/machines/{id}/software",), _SOFTWARE),
    # learn.microsoft.com/defender-endpoint/api/get-security-recommendations
    Endpoint(
        "machines.related",
        ("GET /api/machines/{id}/recommendations",),
        ("SecurityRecommendation.Read.All", "SecurityRecommendation.Read"),
    ),
    # learn.microsoft.com/defender-endpoint/api/get-missing-kbs-machine (application only)
    Endpoint("machines.related", ("GET /api/machines/{id}/getmissingkbs",), ("Software.Read.All",)),
    # ---- alerts ---------------------------------------------------------------------------------
    # learn.microsoft.com/defender-endpoint/api/batch-update-alerts
    Endpoint(
        "alerts.batchUpdate",
        ("POST /api/alerts/batchUpdate",),
        _ALERT_WRITE,
        _p("alertIds!", "status", "assignedTo", "classification", "determination", "comment"),
    ),
    # learn.microsoft.com/defender-endpoint/api/create-alert-by-reference
    Endpoint(
        "alerts.createByReference",
        ("POST /api/alerts/CreateAlertByReference",),
        _ALERT_WRITE,
        _p(
            "eventTime! reportId! machineId! severity! title! description! recommendedAction!",
            "category!",
        ),
    ),
    # learn.microsoft.com/defender-endpoint/api/get-alerts
    Endpoint("alerts.list", ("GET /api/alerts",), _ALERT_READ),
    # learn.microsoft.com/defender-endpoint/api/get-alert-info-by-id
    Endpoint("alerts.get", ("GET /api/alerts/{id}",), _ALERT_READ),
    # learn.microsoft.com/defender-endpoint/api/update-alert: the page's application permission
    # reads "Alerts.ReadWrite.All", a name that does not exist (it is Alert.ReadWrite.All, as on
    # every other alert page). Its table capitalises Status, Classification, Determination and
    # Comment while its example, the alert entity and batchUpdate all write them in camelCase;
    # the names are case-sensitive, so the camelCase the API is shown accepting is kept.
    Endpoint(
        "alerts.update",
        ("PATCH /api/alerts/{id}",),
        _ALERT_WRITE,
        _p("status", "assignedTo", "classification", "determination", "comment"),
    ),
    # learn.microsoft.com/defender-endpoint/api/get-alert-related-domain-info
    Endpoint("alerts.related", ("GET /api/alerts/{id}/domains",), ("URL.Read.All",)),
    # learn.microsoft.com/defender-endpoint/api/get-alert-related-files-info
    Endpoint("alerts.related", ("GET /api/alerts/{id}/files",), ("File.Read.All",)),
    # learn.microsoft.com/defender-endpoint/api/get-alert-related-ip-info
    Endpoint("alerts.related", ("GET /api/alerts/{id}/ips",), ("Ip.Read.All",)),
    # learn.microsoft.com/defender-endpoint/api/get-alert-related-machine-info
    Endpoint("alerts.related", ("GET /api/alerts/{id}/machine",), _MACHINE_READ),
    # learn.microsoft.com/defender-endpoint/api/get-alert-related-user-info
    Endpoint("alerts.related", ("GET /api/alerts/{id}/user",), ("User.Read.All",)),
    # ---- indicators -----------------------------------------------------------------------------
    # learn.microsoft.com/defender-endpoint/api/import-ti-indicators
    Endpoint("indicators.import", ("POST /api/indicators/import",), _INDICATORS, _p("Indicators!")),
    # learn.microsoft.com/defender-endpoint/api/batch-delete-ti-indicators (application only)
    Endpoint(
        "indicators.batchDelete",
        ("POST /api/indicators/BatchDelete",),
        _INDICATORS,
        _p("IndicatorIds!"),
    ),
    # learn.microsoft.com/defender-endpoint/api/get-ti-indicators-collection
    Endpoint("indicators.list", ("GET /api/indicators",), _INDICATORS),
    # learn.microsoft.com/defender-endpoint/api/post-ti-indicator: generateAlert carries no mark
    # (it must be true for the Audit action only), so it is not required.
    Endpoint(
        "indicators.submit",
        ("POST /api/indicators",),
        _INDICATORS,
        _p(
            "indicatorValue! indicatorType! action! application title! description!",
            "expirationTime severity recommendedActions rbacGroupNames educateUrl generateAlert",
        ),
    ),
    # learn.microsoft.com/defender-endpoint/api/delete-ti-indicator-by-id (application only)
    Endpoint("indicators.delete", ("DELETE /api/indicators/{id}",), _INDICATORS),
    # ---- machine actions ------------------------------------------------------------------------
    # learn.microsoft.com/defender-endpoint/api/get-package-sas-uri
    Endpoint(
        "machineactions.getPackageUri",
        ("GET /api/machineactions/{id}/getPackageUri",),
        ("Machine.Read.All", "Machine.ReadWrite.All", "Machine.CollectForensics"),
    ),
    # learn.microsoft.com/defender-endpoint/api/get-live-response-result
    Endpoint(
        "machineactions.liveResponseResult",
        ("GET /api/machineactions/{id}/GetLiveResponseResultDownloadLink",),
        ("Machine.Read.All", "Machine.ReadWrite.All", "Machine.LiveResponse"),
    ),
    # learn.microsoft.com/defender-endpoint/api/cancel-machine-action: any of the action
    # permissions, none less privileged than another, in the page's order; Comment is not marked
    # required.
    Endpoint(
        "machineactions.cancel",
        ("POST /api/machineactions/{id}/cancel",),
        (
            "Machine.CollectForensics",
            "Machine.Isolate",
            "Machine.RestrictExecution",
            "Machine.Scan",
            "Machine.Offboard",
            "Machine.StopAndQuarantine",
            "Machine.LiveResponse",
        ),
        _p("Comment"),
    ),
    # learn.microsoft.com/defender-endpoint/api/get-machineactions-collection
    Endpoint("machineactions.list", ("GET /api/machineactions",), _MACHINE_READ),
    # learn.microsoft.com/defender-endpoint/api/get-machineaction-object
    Endpoint("machineactions.get", ("GET /api/machineactions/{id}",), _MACHINE_READ),
    # ---- files, IPs, domains --------------------------------------------------------------------
    # learn.microsoft.com/defender-endpoint/api/get-file-information
    Endpoint("files.get", ("GET /api/files/{id}",), ("File.Read.All",)),
    # learn.microsoft.com/defender-endpoint/api/get-file-related-alerts
    Endpoint("files.get", ("GET /api/files/{id}/alerts",), _ALERT_READ),
    # learn.microsoft.com/defender-endpoint/api/get-file-related-machines
    Endpoint("files.get", ("GET /api/files/{id}/machines",), _MACHINE_READ),
    # learn.microsoft.com/defender-endpoint/api/get-file-statistics
    Endpoint("files.get", ("GET /api/files/{id}/stats",), ("File.Read.All",)),
    # learn.microsoft.com/defender-endpoint/api/get-ip-related-alerts
    Endpoint("ips.get", ("GET /api/ips/{ip}/alerts",), _ALERT_READ),
    # learn.microsoft.com/defender-endpoint/api/get-ip-statistics
    Endpoint("ips.get", ("GET /api/ips/{ip}/stats",), ("Ip.Read.All",)),
    # learn.microsoft.com/defender-endpoint/api/get-domain-related-alerts: the current page lists
    # only the read-write permissions (the file and IP pages accept Alert.Read.All too).
    Endpoint("domains.get", ("GET /api/domains/{domain}/alerts",), _ALERT_WRITE),
    # learn.microsoft.com/defender-endpoint/api/get-domain-related-machines
    Endpoint("domains.get", ("GET /api/domains/{domain}/machines",), _MACHINE_READ),
    # learn.microsoft.com/defender-endpoint/api/get-domain-statistics
    Endpoint("domains.get", ("GET /api/domains/{domain}/stats",), ("URL.Read.All",)),
    # ---- investigations, antivirus health -------------------------------------------------------
    # learn.microsoft.com/defender-endpoint/api/get-investigation-collection
    Endpoint("investigations.get", ("GET /api/investigations",), _ALERT_READ),
    # learn.microsoft.com/defender-endpoint/api/get-investigation-object
    Endpoint("investigations.get", ("GET /api/investigations/{id}",), _ALERT_READ),
    # learn.microsoft.com/defender-endpoint/api/device-health-export-antivirus-health-report-api
    Endpoint("deviceavinfo.list", ("GET /api/deviceavinfo",), ("Machine.Read.All", "Machine.Read")),
    # ---- hunting --------------------------------------------------------------------------------
    # learn.microsoft.com/defender-endpoint/api/run-advanced-query-api
    Endpoint(
        "advancedqueries.run",
        ("POST /api/advancedqueries/run",),
        ("AdvancedQuery.Read.All", "AdvancedQuery.Read"),
        _p("Query!"),
    ),
    # learn.microsoft.com/defender-xdr/api-advanced-hunting
    Endpoint(
        "advancedhunting.run",
        ("POST /api/advancedhunting/run",),
        ("AdvancedHunting.Read.All", "AdvancedHunting.Read"),
        _p("Query!"),
    ),
    # ---- incidents (Defender XDR) ---------------------------------------------------------------
    # learn.microsoft.com/defender-xdr/api-list-incidents
    Endpoint("incidents", ("GET /api/incidents",), _INCIDENT_READ),
    # learn.microsoft.com/defender-xdr/api-get-incident
    Endpoint("incidents", ("GET /api/incidents/{id}",), _INCIDENT_READ),
    # learn.microsoft.com/defender-xdr/api-update-incidents
    Endpoint(
        "incidents",
        ("PATCH /api/incidents/{id}",),
        ("Incident.ReadWrite.All", "Incident.ReadWrite"),
        _p("status", "assignedTo", "classification", "determination", "tags", "comment"),
    ),
    # ---- Microsoft Graph security ---------------------------------------------------------------
    # learn.microsoft.com/graph/api/security-security-runhuntingquery
    Endpoint(
        "graph.runHuntingQuery",
        ("POST /v1.0/security/runHuntingQuery",),
        ("ThreatHunting.Read.All",),
        _p("Query!", "Timespan"),
    ),
    # tiIndicators are beta only (/beta is matched as /v1.0).
    # learn.microsoft.com/graph/api/tiindicators-list?view=graph-rest-beta
    Endpoint("graph.tiIndicators", ("GET /v1.0/security/tiIndicators",), _TI_INDICATORS),
    # learn.microsoft.com/graph/api/tiindicators-post?view=graph-rest-beta: the required fields the
    # page names, and the others of its example; at least one observable (file, email or network)
    # must come too, from the tiIndicator resource page.
    Endpoint(
        "graph.tiIndicators",
        ("POST /v1.0/security/tiIndicators",),
        _TI_INDICATORS,
        _p(
            "action! description! expirationDateTime! targetProduct! threatType! tlpLevel!",
            "activityGroupNames confidence externalId fileHashType fileHashValue killChain",
            "malwareFamilyNames severity tags",
        ),
    ),
    # learn.microsoft.com/graph/api/tiindicator-deletetiindicators?view=graph-rest-beta: value is
    # not marked; it is the call's whole content, so the stricter reading requires it.
    Endpoint(
        "graph.tiIndicators",
        ("POST /v1.0/security/tiIndicators/deleteTiIndicators",),
        _TI_INDICATORS,
        _p("value!"),
    ),
    # learn.microsoft.com/graph/api/tiindicator-get?view=graph-rest-beta
    Endpoint("graph.tiIndicators", ("GET /v1.0/security/tiIndicators/{id}",), _TI_INDICATORS),
    # learn.microsoft.com/graph/api/tiindicator-update?view=graph-rest-beta: the page says id,
    # expirationDateTime and targetProduct are required though its examples omit them; the
    # stricter reading follows the sentence.
    Endpoint(
        "graph.tiIndicators",
        ("PATCH /v1.0/security/tiIndicators/{id}",),
        _TI_INDICATORS,
        _p(
            "id! expirationDateTime! targetProduct! action activityGroupNames",
            "additionalInformation confidence description diamondModel externalId isActive",
            "killChain knownFalsePositives lastReportedDateTime malwareFamilyNames passiveOnly",
            "severity tags tlpLevel",
        ),
    ),
    # learn.microsoft.com/graph/api/tiindicator-delete?view=graph-rest-beta
    Endpoint("graph.tiIndicators", ("DELETE /v1.0/security/tiIndicators/{id}",), _TI_INDICATORS),
    # learn.microsoft.com/graph/api/security-casesroot-list-ediscoverycases
    Endpoint("graph.ediscovery", ("GET /v1.0/security/cases/ediscoveryCases",), _EDISCOVERY_READ),
    # learn.microsoft.com/graph/api/security-casesroot-post-ediscoverycases
    Endpoint(
        "graph.ediscovery",
        ("POST /v1.0/security/cases/ediscoveryCases",),
        _EDISCOVERY_WRITE,
        _p("displayName!", "description", "externalId"),
    ),
    # learn.microsoft.com/graph/api/security-ediscoverycase-get
    Endpoint(
        "graph.ediscovery", ("GET /v1.0/security/cases/ediscoveryCases/{id}",), _EDISCOVERY_READ
    ),
    # learn.microsoft.com/graph/api/security-ediscoverycase-update
    Endpoint(
        "graph.ediscovery",
        ("PATCH /v1.0/security/cases/ediscoveryCases/{id}",),
        _EDISCOVERY_WRITE,
        _p("description", "displayName", "externalId"),
    ),
    # The rest of /security is graph.security's.
    # learn.microsoft.com/graph/api/security-list-alerts_v2
    Endpoint("graph.security", ("GET /v1.0/security/alerts_v2",), _SECURITY_ALERT_READ),
    # learn.microsoft.com/graph/api/security-alert-get
    Endpoint("graph.security", ("GET /v1.0/security/alerts_v2/{id}",), _SECURITY_ALERT_READ),
    # learn.microsoft.com/graph/api/security-alert-update
    Endpoint(
        "graph.security",
        ("PATCH /v1.0/security/alerts_v2/{id}",),
        ("SecurityAlert.ReadWrite.All",),
        _p("status", "classification", "determination", "assignedTo"),
    ),
    # learn.microsoft.com/graph/api/security-list-incidents
    Endpoint("graph.security", ("GET /v1.0/security/incidents",), _SECURITY_INCIDENT_READ),
    # learn.microsoft.com/graph/api/security-incident-get
    Endpoint("graph.security", ("GET /v1.0/security/incidents/{id}",), _SECURITY_INCIDENT_READ),
    # learn.microsoft.com/graph/api/security-incident-update
    Endpoint(
        "graph.security",
        ("PATCH /v1.0/security/incidents/{id}",),
        ("SecurityIncident.ReadWrite.All",),
        _p("assignedTo", "classification", "determination", "status", "customTags"),
    ),
    # The legacy alerts API (being retired in favour of alerts_v2).
    # learn.microsoft.com/graph/api/alert-list
    Endpoint("graph.security", ("GET /v1.0/security/alerts",), _SECURITY_EVENTS_READ),
    # learn.microsoft.com/graph/api/alert-get
    Endpoint("graph.security", ("GET /v1.0/security/alerts/{id}",), _SECURITY_EVENTS_READ),
    # learn.microsoft.com/graph/api/alert-update: vendorInformation (with its provider and vendor)
    # must be in every body.
    Endpoint(
        "graph.security",
        ("PATCH /v1.0/security/alerts/{id}",),
        _SECURITY_EVENTS_WRITE,
        _p("assignedTo closedDateTime comments feedback status tags vendorInformation!"),
    ),
    # learn.microsoft.com/graph/api/security-list-securescores
    Endpoint("graph.security", ("GET /v1.0/security/secureScores",), _SECURITY_EVENTS_READ),
    # learn.microsoft.com/graph/api/securescore-get
    Endpoint("graph.security", ("GET /v1.0/security/secureScores/{id}",), _SECURITY_EVENTS_READ),
    # learn.microsoft.com/graph/api/security-list-securescorecontrolprofiles
    Endpoint(
        "graph.security", ("GET /v1.0/security/secureScoreControlProfiles",), _SECURITY_EVENTS_READ
    ),
    # learn.microsoft.com/graph/api/securescorecontrolprofile-get
    Endpoint(
        "graph.security",
        ("GET /v1.0/security/secureScoreControlProfiles/{id}",),
        _SECURITY_EVENTS_READ,
    ),
    # learn.microsoft.com/graph/api/securescorecontrolprofile-update: vendorInformation is required.
    Endpoint(
        "graph.security",
        ("PATCH /v1.0/security/secureScoreControlProfiles/{id}",),
        _SECURITY_EVENTS_WRITE,
        _p("assignedTo", "comment", "state", "vendorInformation!"),
    ),
    # learn.microsoft.com/graph/api/security-threatintelligence-list-articles
    Endpoint(
        "graph.security", ("GET /v1.0/security/threatIntelligence/articles",), _THREAT_INTELLIGENCE
    ),
    # learn.microsoft.com/graph/api/security-article-get
    Endpoint(
        "graph.security",
        ("GET /v1.0/security/threatIntelligence/articles/{id}",),
        _THREAT_INTELLIGENCE,
    ),
    # learn.microsoft.com/graph/api/security-article-list-indicators
    Endpoint(
        "graph.security",
        ("GET /v1.0/security/threatIntelligence/articles/{id}/indicators",),
        _THREAT_INTELLIGENCE,
    ),
    # learn.microsoft.com/graph/api/security-articleindicator-get
    Endpoint(
        "graph.security",
        ("GET /v1.0/security/threatIntelligence/articleIndicators/{id}",),
        _THREAT_INTELLIGENCE,
    ),
    # learn.microsoft.com/graph/api/security-threatintelligence-list-intelprofiles
    Endpoint(
        "graph.security",
        ("GET /v1.0/security/threatIntelligence/intelProfiles",),
        _THREAT_INTELLIGENCE,
    ),
    # learn.microsoft.com/graph/api/security-intelligenceprofile-get
    Endpoint(
        "graph.security",
        ("GET /v1.0/security/threatIntelligence/intelProfiles/{id}",),
        _THREAT_INTELLIGENCE,
    ),
    # learn.microsoft.com/graph/api/security-intelligenceprofile-list-indicators
    Endpoint(
        "graph.security",
        ("GET /v1.0/security/threatIntelligence/intelProfiles/{id}/indicators",),
        _THREAT_INTELLIGENCE,
    ),
    # learn.microsoft.com/graph/api/security-host-get
    Endpoint(
        "graph.security",
        ("GET /v1.0/security/threatIntelligence/hosts/{id}",),
        _THREAT_INTELLIGENCE,
    ),
    # learn.microsoft.com/graph/api/security-host-list-passivedns
    Endpoint(
        "graph.security",
        ("GET /v1.0/security/threatIntelligence/hosts/{id}/passiveDns",),
        _THREAT_INTELLIGENCE,
    ),
    # learn.microsoft.com/graph/api/security-host-get-reputation
    Endpoint(
        "graph.security",
        ("GET /v1.0/security/threatIntelligence/hosts/{id}/reputation",),
        _THREAT_INTELLIGENCE,
    ),
    # learn.microsoft.com/graph/api/security-host-list-components
    Endpoint(
        "graph.security",
        ("GET /v1.0/security/threatIntelligence/hosts/{id}/components",),
        _THREAT_INTELLIGENCE,
    ),
    # learn.microsoft.com/graph/api/security-host-list-childhostpairs
    Endpoint(
        "graph.security",
        ("GET /v1.0/security/threatIntelligence/hosts/{id}/childHostPairs",),
        _THREAT_INTELLIGENCE,
    ),
    # learn.microsoft.com/graph/api/security-whoisrecord-get
    Endpoint(
        "graph.security",
        (
            "GET /v1.0/security/threatIntelligence/hosts/{id}/whois",
            "GET /v1.0/security/threatIntelligence/whoisRecords/{id}",
        ),
        _THREAT_INTELLIGENCE,
    ),
    # learn.microsoft.com/graph/api/security-whoisrecord-list-history
    Endpoint(
        "graph.security",
        (
            "GET /v1.0/security/threatIntelligence/hosts/{id}/whois/history",
            "GET /v1.0/security/threatIntelligence/whoisRecords/{id}/history",
        ),
        _THREAT_INTELLIGENCE,
    ),
    # learn.microsoft.com/graph/api/attacksimulationroot-list-simulations
    Endpoint(
        "graph.security",
        ("GET /v1.0/security/attackSimulation/simulations",),
        _ATTACK_SIMULATION_READ,
    ),
    # learn.microsoft.com/graph/api/attacksimulationroot-post-simulation: the page introduces its
    # table as the properties required to create a simulation, marking only durationInDays
    # optional; the stricter reading takes the rest as required.
    Endpoint(
        "graph.security",
        ("POST /v1.0/security/attackSimulation/simulations",),
        _ATTACK_SIMULATION_WRITE,
        _p(
            "attackTechnique! attackType! createdBy! displayName! durationInDays",
            "endUserNotificationSetting! includedAccountTarget! landingPage! lastModifiedBy!",
            "launchDateTime! loginPage! oAuthConsentAppDetail! payload! payloadDeliveryPlatform!",
            "status! trainingSetting!",
        ),
    ),
    # learn.microsoft.com/graph/api/simulation-get
    Endpoint(
        "graph.security",
        ("GET /v1.0/security/attackSimulation/simulations/{id}",),
        _ATTACK_SIMULATION_READ,
    ),
    # learn.microsoft.com/graph/api/simulation-update
    Endpoint(
        "graph.security",
        ("PATCH /v1.0/security/attackSimulation/simulations/{id}",),
        _ATTACK_SIMULATION_WRITE,
        _p(
            "attackTechnique attackType displayName durationInDays excludedAccountTarget",
            "includedAccountTarget payload status",
        ),
    ),
)


class Reference:
    """Finds the documented endpoint of a request (method and path, no query string)."""

    __slots__ = ("_by_name", "_router")

    def __init__(self, endpoints: tuple[Endpoint, ...] = ENDPOINTS) -> None:
        # The catalogue's router does the matching: the same canonical form, the same costs.
        specs = [
            RouteSpec(str(index), endpoint.match, ()) for index, endpoint in enumerate(endpoints)
        ]
        self._router = Router(specs)
        self._by_name = {str(index): endpoint for index, endpoint in enumerate(endpoints)}

    def find(self, method: str, path: str) -> Endpoint | None:
        """The endpoint a request is for, or None when the table does not know it."""
        return self._by_name.get(self._router.match(method, path).name)


#: The table of the built-in endpoints.
REFERENCE: Final = Reference()
