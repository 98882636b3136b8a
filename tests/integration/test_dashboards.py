"""The Grafana dashboards, proved against a real Prometheus scraping a real proxy.

The proxy CLI runs in front of the simulator with a small quota on ``machines.list``, so its
traffic makes the proxy wait and refuse as well as forward 200s, 401s, 403s, 404s, an HTML 502,
a reset connection and the API's own 429. The simulator checks tokens as the API does: that
traffic carries a token it accepts, and beside it go tokens it refuses (expired, minted for
Graph, without the endpoint's role, none at all) from an app the config names and from one it
does not, so the panels of 401/403 by cause and app have data. Prometheus scrapes the admin port
every second with the ``namespace`` and ``pod`` labels a Kubernetes scrape adds. Every panel's
expression, its variables substituted, must then parse and return data; every metric a dashboard
or an alert rule names must be in the proxy's exposition. Two more listeners hold a credential
each, minted by the simulator's identity provider: one mints (its secret ends tomorrow), one is
refused (AADSTS7000222), so the Credentials row has data and its alerts go off.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import math
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from proxy.simulator.app import SimConfig, make_app
from proxy.simulator.directory import App, Secret
from proxy.simulator.tokens import bearer
from tests.idpkit import running_idp, write_files
from tests.procs import start_cli
from tests.prom import Matcher, PrometheusServer, selectors

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
#: What a Kubernetes scrape adds to every series; the dashboards select on it.
SCRAPE_LABELS = {"namespace": "test", "pod": "proxy-0"}
#: What Grafana would put in for the variables, for this scrape.
VALUES = {
    "namespace": "test",
    "pod": "proxy-0",
    "route": ".*",
    "__rate_interval": "1m",
    "__interval": "5s",
    "__range": "5m",
}
DEFAULT_JOB = "defender-proxy"
#: Series Prometheus makes itself; rules may name them, the proxy never exports them.
FROM_PROMETHEUS = frozenset(
    {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added",
     "scrape_samples_post_metric_relabeling", "ALERTS", "ALERTS_FOR_STATE"}
)  # fmt: skip
TARGET_LABELS = frozenset({"job", "instance", *SCRAPE_LABELS})
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_LABEL_VALUES = re.compile(r"^label_values\((?:(.*),\s*)?(\w+)\)$", re.S)
# A comparison with a number: "> 0.2", ">= 3"; not "> 5 * rate(…)", a factor.
_ABOVE = re.compile(r">=?\s*(?:bool\s+)?(\d+(?:\.\d+)?(?:e[+-]?\d+)?)(?![\d.]|\s*[*/])", re.I)
# A number of days the time left is compared with: "< 14 * 86400".
_DAYS_LEFT = re.compile(r"<\s*(\d+(?:\.\d+)?)\s*\*\s*86400\b")
EXPIRY = "defender_proxy_credential_expiry_seconds"

TID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
#: the app throttle.identities.names calls soar, and one it does not name (labelled other)
SOAR = "4a5f4f6e-8b9c-4d0e-9f1a-2b3c4d5e6f70"
UNNAMED = "aaaaaaaa-0000-0000-0000-000000000009"
DEFENDER_AUD = "https://api.securitycenter.microsoft.com"
GRAPH_AUD = "https://graph.microsoft.com"
# A quota of 5 per second on machines.list: a burst of 12 gets 5 at once, 5 after ~1.1 s (within
# max_wait) and 2 refusals. max_pause caps the pause an API 429 causes, so the next round's 429
# reaches the API again and the throttled counter moves under rate().
PROXY_CONFIG = """\
upstreams:
  - {{name: default, origin: "http://127.0.0.1:{port}", listen: "127.0.0.1:0"}}
  # A listener holding a credential, so the Credentials row and its alerts have series: its
  # secret has expired (every token request is refused, AADSTS7000222) and the config says it
  # ends tomorrow. (One pod's successful mints would hide another credential's failures from
  # DefenderProxyTokenMintingFailing, which has no upstream to tell them apart.)
  - name: held
    origin: http://127.0.0.1:{port}
    listen: 127.0.0.1:0
    credentials: {{tenant_id: {tid}, client_id: {held}, client_secret_file: {secret},
                  authority: "{idp}", scope: {scope}, client_secret_expires: {tomorrow}}}
admin_listen: 127.0.0.1:0
tls: {{ca_bundle: {ca}}}
timeouts: {{connect: 1s, read: 5s}}
shutdown_grace: 1s
throttle:
  max_wait: 2s
  margin: 100ms
  max_pause: 1s
  routes:
    - {{name: machines.list, limits: ["5/1s"]}}
  identities:
    names: {{soar: {soar}}}
"""
#: the app the identity provider knows, whose secret has expired
HELD_APP = "0ba0c3a5-1111-4b2d-9c1e-0000000000a1"
SECRET = "dashboard-secret~value"
#: the alerts a credential's trouble sets off, and labels each has beside the scrape's own
CREDENTIAL_ALERTS = {
    "DefenderProxyTokenMintingFailing": {"code": "7000222", "pod": "proxy-0"},
    "DefenderProxyCredentialExpiringSoon": {"upstream": "held", "kind": "secret"},
    "DefenderProxyCredentialExpiring": {"upstream": "held", "kind": "secret"},
}
# (method, path, X-Simulate, the status it gets): one of each answer the panels show, on several
# routes, with a token the simulator accepts. The 401s and 403s here are the API's own on such a
# token (token_ok); the reset is the proxy's 502.
MIX = (
    ("GET", "/api/machines/1", "", 200),
    ("GET", "/api/machines/2", "", 200),
    ("GET", "/api/alerts", "", 200),
    ("GET", "/api/alerts/1", "error=Unauthorized", 401),
    ("GET", "/api/machines/1", "error=Unauthorized", 401),
    ("GET", "/api/machines/2", "error=Forbidden", 403),
    ("POST", "/api/machines/3/isolate", "error=Forbidden", 403),
    ("GET", "/api/machines/4", "error=NotFound", 404),
    ("GET", "/api/alerts", "body=html;status=502", 502),
    ("GET", "/api/alerts/2", "reset", 502),
    # Its own route: the pause it causes holds nothing else.
    ("POST", "/api/advancedqueries/run", "hunting-429", 429),
)
# (method, path, app, cause, the status it gets): tokens the simulator refuses, off machines.list
# so that the burst's quota is the burst's alone.
REFUSED = (
    ("GET", "/api/alerts", SOAR, "expired", 401),
    ("GET", "/api/machines/1", SOAR, "wrong_audience", 401),
    ("POST", "/api/machines/3/isolate", SOAR, "missing_role", 403),
    ("POST", "/api/machines/4/isolate", UNNAMED, "missing_role", 403),
    ("GET", "/api/alerts/3", None, "no_token", 401),
)
# The (cause, app) label pairs the traffic makes, each at least once a round.
CAUSES = (
    ("token_ok", "soar"),
    ("expired", "soar"),
    ("wrong_audience", "soar"),
    ("missing_role", "soar"),
    ("missing_role", "other"),
    ("no_token", "anonymous"),
)
BURST = 12


def _dashboards() -> Iterator[tuple[str, dict[str, Any]]]:
    assert DASHBOARDS, f"no dashboards in {ROOT / 'dashboards'}"
    for path in DASHBOARDS:
        yield path.name, json.loads(path.read_text())


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that is not a row, those inside collapsed rows included."""
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def _targets() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, dashboard in _dashboards():
        for panel in _panels(dashboard):
            for target in panel["targets"]:
                yield f"{name}: {panel['title']!r} {target['refId']}", target


def _variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


def _variable_query(variable: dict[str, Any]) -> str:
    query = variable["query"]
    return str(query["query"] if isinstance(query, dict) else query)


def _substitute(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        assert name in VALUES, f"unknown variable ${name} in {expr}"
        return VALUES[name]

    return _VARIABLE.sub(value, expr)


def _rules() -> list[dict[str, Any]]:
    if not RULES.exists():
        return []
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _thresholds(rules: list[dict[str, Any]], status: str) -> set[float]:
    """The numbers the alert rules on ``status`` compare a rate against (``> 0`` guards aside)."""
    found = {
        float(number)
        for rule in rules
        if "alert" in rule
        and any(("status", "=", status) in matchers for _, matchers in selectors(rule["expr"]))
        for number in _ABOVE.findall(rule["expr"])
    }
    found.discard(0.0)
    return found


def _job(rules: list[dict[str, Any]]) -> str:
    """The job name the rules expect on ``up``, so the test's scrape config matches them."""
    for rule in rules:
        for _, matchers in selectors(rule["expr"]):
            for label, op, value in matchers:
                if label == "job" and op == "=":
                    return value
    return DEFAULT_JOB


def _exposed(text: str) -> dict[str, list[dict[str, str]]]:
    """Sample name → the label sets it has in the exposition."""
    exposed: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            exposed.setdefault(sample.name, []).append(dict(sample.labels))
    return exposed


def _sum(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` that carry ``labels``."""
    return sum(
        float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )


def _selector_problems(
    where: str, name: str, matchers: list[Matcher], exposed: dict[str, list[dict[str, str]]]
) -> list[str]:
    """What is wrong with one selector: a metric the proxy does not export, a label it lacks."""
    if name not in exposed:
        return [f"{where}: {name or 'a selector without a name'} is not in the exposition"]
    labels = {label for series in exposed[name] for label in series} | TARGET_LABELS
    return [
        f"{where}: {name} has no label {label!r}"
        for label, _, _ in matchers
        if label not in labels and label != "__name__"
    ]


def _authorization(app: str | None, cause: str) -> str | None:
    """A token of ``app`` that the API refuses for ``cause`` ("" for one it accepts); None for
    ``no_token``."""
    if app is None or cause == "no_token":
        return None
    now = int(time.time())
    claims: dict[str, Any] = {
        "aud": DEFENDER_AUD,
        "exp": now + 3600,
        "nbf": now - 600,
        # What the mix's endpoints need (proxy/reference.py), as an app granted them has.
        "roles": [
            "Machine.Isolate",
            "Machine.Read.All",
            "Alert.Read.All",
            "AdvancedQuery.Read.All",
        ],
    }
    if cause == "expired":
        claims["exp"] = now - 600
    elif cause == "wrong_audience":
        claims["aud"] = GRAPH_AUD
    elif cause == "missing_role":
        claims["roles"] = ["Machine.Read.All"]
    else:
        assert not cause, cause
    return bearer(TID, app, **claims)


async def _traffic(session: aiohttp.ClientSession, port: int) -> Counter[int]:
    """One round of the mix and the refused tokens, then the burst over machines.list; the
    statuses seen. Every request of the mix and the refusals gets the status it is listed with."""
    seen: Counter[int] = Counter()
    unexpected: list[str] = []
    sound = _authorization(SOAR, "")

    async def call(
        method: str, path: str, directive: str, authorization: str | None, status: int | None
    ) -> None:
        headers = {"X-Simulate": directive} if directive else {}
        if authorization is not None:
            headers["Authorization"] = authorization
        async with session.request(
            method, f"http://127.0.0.1:{port}{path}", headers=headers
        ) as response:
            await response.read()
            seen[response.status] += 1
        if status is not None and response.status != status:
            unexpected.append(f"{method} {path} {directive!r}: {response.status}, not {status}")

    for method, path, directive, status in MIX:
        await call(method, path, directive, sound, status)
    for method, path, app, cause, status in REFUSED:
        await call(method, path, "", _authorization(app, cause), status)
    # A body parameter in the wrong case, which the API refuses: the proxy's hint on the 400.
    async with session.post(
        f"http://127.0.0.1:{port}/api/machines/5/isolate",
        json={"comment": "isolate"},
        headers={"Authorization": sound or "", "X-Simulate": "error=InvalidRequestBody"},
    ) as response:
        await response.read()
        seen[response.status] += 1
        if response.status != 400 or "X-Defender-Proxy-Hint" not in response.headers:
            unexpected.append(f"the body typo: {response.status}, {dict(response.headers)}")
    await asyncio.gather(*(call("GET", "/api/machines", "", sound, None) for _ in range(BURST)))
    assert not unexpected, unexpected
    return seen


async def _scraped(prometheus: PrometheusServer, expr: str, at_least: float) -> None:
    """Wait (bounded) until Prometheus has a sample of ``expr`` of at least ``at_least``."""
    async with asyncio.timeout(15):
        while True:
            result = await prometheus.query(expr)
            if result and float(result[0]["value"][1]) >= at_least:
                return
            await asyncio.sleep(0.2)


async def _evaluated_rules(prometheus: PrometheusServer) -> list[dict[str, Any]]:
    """The loaded rules, once each has been evaluated at least once (bounded wait)."""
    async with asyncio.timeout(10):
        while True:
            answer = await prometheus.api("rules")
            rules = [rule for g in answer["data"]["groups"] for rule in g["rules"]]
            if all(not rule["lastEvaluation"].startswith("0001-") for rule in rules):
                return rules
            await asyncio.sleep(0.2)


async def _query_problems(
    prometheus: PrometheusServer, where: str, target: dict[str, Any]
) -> list[str]:
    """What is wrong with one panel target's answer: an error, no data, or missing legend
    labels."""
    expr = _substitute(target["expr"])
    try:
        result = await prometheus.query(expr)
    except AssertionError as exc:
        return [f"{where}: {exc}\n    {expr}"]
    values = [float(series["value"][1]) for series in result]
    if not any(math.isfinite(value) for value in values):
        return [f"{where}: no data ({len(values)} series, none finite)\n    {expr}"]
    legend = set(_LEGEND_LABEL.findall(target.get("legendFormat", "")))
    return [
        f"{where}: legend label {label!r} missing from {series['metric']}"
        for series in result
        for label in legend
        if label not in series["metric"]
    ]


async def _variable_problems(
    prometheus: PrometheusServer, where: str, variable: dict[str, Any]
) -> list[str]:
    """What is wrong with a label_values() variable: its selector finds no series with the label."""
    match = _LABEL_VALUES.match(_variable_query(variable))
    assert match, where
    selector, label = match.group(1) or "", match.group(2)
    # label_values(label) alone looks at every series.
    selector = _substitute(selector) if selector else '{__name__=~".+"}'
    expr = f"group by ({label}) ({selector})"
    try:
        result = await prometheus.query(expr)
    except AssertionError as exc:
        return [f"{where}: {exc}\n    {expr}"]
    if not any(label in series["metric"] for series in result):
        return [f"{where}: no value for {label}\n    {expr}"]
    return []


def test_dashboards_are_well_formed() -> None:
    """Each dashboard has a recent schema, the variables, unique ids and ${datasource} everywhere."""
    uids = set()
    for name, dashboard in _dashboards():
        assert dashboard["schemaVersion"] >= 39, name
        assert dashboard["uid"] not in uids, f"{name}: uid {dashboard['uid']} is used twice"
        uids.add(dashboard["uid"])
        variables = _variables(dashboard)
        assert variables["datasource"]["type"] == "datasource", name
        assert variables["datasource"]["query"] == "prometheus", name
        for variable in ("namespace", "pod", "route"):
            assert variables[variable]["type"] == "query", (name, variable)
            assert variables[variable]["datasource"]["uid"] == "${datasource}", (name, variable)
            assert _LABEL_VALUES.match(_variable_query(variables[variable])), (name, variable)
        assert variables["route"]["multi"], name
        assert variables["route"]["includeAll"], name
        assert variables["route"]["allValue"] == ".*", name
        ids = [panel["id"] for panel in dashboard["panels"]]
        ids += [p["id"] for row in dashboard["panels"] for p in row.get("panels", [])]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat: {sorted(ids)}"
        for panel in _panels(dashboard):
            assert panel["datasource"]["uid"] == "${datasource}", (name, panel["title"])
            assert panel["targets"], (name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", (name, panel["title"])
                for metric, matchers in selectors(target["expr"]):
                    for label in SCRAPE_LABELS:
                        assert (label, "=~", f"${label}") in matchers, (panel["title"], metric)


@pytest.mark.parametrize("status", ["401", "403"])
def test_auth_error_panel_draws_the_alert_thresholds(status: str) -> None:
    """The 401 and 403 panels draw, as lines, exactly the thresholds of that status's alert rules."""
    rules = _rules()
    expected = _thresholds(rules, status)
    assert expected or not rules, f"no threshold in the {status} alert rules of {RULES}"
    panels = [
        panel
        for _, dashboard in _dashboards()
        for panel in _panels(dashboard)
        if any(
            ("status", "=", status) in matchers
            for target in panel["targets"]
            for _, matchers in selectors(target["expr"])
        )
    ]
    assert panels, f"no panel shows the API's {status}s"
    for panel in panels:
        defaults = panel["fieldConfig"]["defaults"]
        assert "line" in defaults["custom"]["thresholdsStyle"]["mode"], panel["title"]
        drawn = {step["value"] for step in defaults["thresholds"]["steps"]} - {None}
        assert drawn, panel["title"]
        if rules:
            assert drawn == expected, panel["title"]


def test_expiry_panel_draws_the_alert_thresholds() -> None:
    """The credential expiry panel shows days and changes colour at exactly the alerts' days."""
    expected = {
        float(days)
        for rule in _rules()
        if "alert" in rule and any(metric == EXPIRY for metric, _ in selectors(rule["expr"]))
        for days in _DAYS_LEFT.findall(rule["expr"])
    }
    assert expected, f"no days-left threshold in the {EXPIRY} alert rules of {RULES}"
    panels = [
        panel
        for _, dashboard in _dashboards()
        for panel in _panels(dashboard)
        if any(
            metric == EXPIRY
            for target in panel["targets"]
            for metric, _ in selectors(target["expr"])
        )
    ]
    assert panels, f"no panel shows {EXPIRY}"
    for panel in panels:
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults["unit"] == "d", panel["title"]
        assert all(target["expr"].endswith("/ 86400") for target in panel["targets"])
        drawn = {step["value"] for step in defaults["thresholds"]["steps"]} - {None}
        assert drawn == expected, panel["title"]


@pytest.fixture
async def simulator(aiohttp_server: Callable[..., Any]) -> TestServer:
    """The stand-in API checking tokens as the real one does."""
    server: TestServer = await aiohttp_server(make_app(SimConfig(check_tokens=True)))
    return server


@dataclass
class Scraped:
    """Prometheus after it has scraped the proxy through two rounds of traffic."""

    prometheus: PrometheusServer
    #: the proxy's /metrics after the last round
    exposition: str
    rules: list[dict[str, Any]]
    #: the proxy's port, for traffic of a test's own
    port: int


@pytest.fixture
async def scraped(
    simulator: TestServer, tmp_path: Path, unused_tcp_port: int
) -> AsyncIterator[Scraped]:
    async with contextlib.AsyncExitStack() as stack:
        async for scrape in _scrape(stack, simulator, tmp_path, unused_tcp_port):
            yield scrape


async def _scrape(
    stack: contextlib.AsyncExitStack, simulator: TestServer, tmp_path: Path, unused_tcp_port: int
) -> AsyncIterator[Scraped]:
    """The proxy CLI in front of the simulator, scraped by Prometheus, after the traffic."""
    assert shutil.which("prometheus"), "prometheus is required (Debian package prometheus)"
    rules = _rules()
    if rules:
        promtool = shutil.which("promtool")
        assert promtool, "promtool is required (Debian package prometheus)"
        checked = subprocess.run(  # noqa: ASYNC221 - a short local check
            [promtool, "check", "rules", str(RULES)], capture_output=True, timeout=30
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    job = _job(rules)
    config = tmp_path / "proxy.yaml"
    files = write_files(tmp_path)
    secret = tmp_path / "client-secret"
    secret.write_text(SECRET, encoding="utf-8")
    apps = (App(TID, HELD_APP, ("Machine.Read.All",), (Secret(SECRET, expired=True),)),)
    idp = await stack.enter_async_context(running_idp(files, apps))
    tomorrow = datetime.date.fromtimestamp(time.time() + 86400).isoformat()
    config.write_text(
        PROXY_CONFIG.format(
            port=simulator.port, soar=SOAR, tid=TID, held=HELD_APP,
            secret=secret, idp=idp.url, scope=DEFENDER_AUD + "/.default",
            tomorrow=tomorrow, ca=files.ca_bundle,
        )
    )  # fmt: skip
    process = await start_cli("run", "--config", str(config))
    prometheus = PrometheusServer(tmp_path, unused_tcp_port)
    drain: asyncio.Task[None] | None = None
    try:
        line = await process.wait_for("listening")
        # Keep reading its log lines, or a full pipe would stall the proxy mid-test.
        drain = asyncio.create_task(process.drain_output())
        port = int(line["proxy"].rsplit(":", 1)[1])
        admin = line["admin"]
        await prometheus.start(
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                           "evaluation_interval": "1s"},
                "rule_files": [str(RULES)] if rules else [],
                "scrape_configs": [
                    {"job_name": job,
                     "static_configs": [{"targets": [admin], "labels": SCRAPE_LABELS}]}
                ],
            }
        )  # fmt: skip
        await _scraped(prometheus, f'up{{job="{job}"}}', 1)
        statuses: Counter[int] = Counter()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            # Two rounds with a scrape between them, so every counter moves under rate().
            for _ in range(2):
                statuses += await _traffic(session, port)
                async with session.get(f"http://{admin}/metrics") as response:
                    exposition = await response.text()
                await _scraped(
                    prometheus,
                    f'sum(defender_proxy_requests_total{{job="{job}"}})',
                    _sum(exposition, "defender_proxy_requests_total"),
                )
        # The traffic did what the panels need: every answer, waits, refusals, an API 429, a reset.
        assert {200, 401, 403, 404, 429, 502} <= statuses.keys(), statuses
        for name, labels in (
            ("defender_proxy_admissions_total", {"route": "machines.list", "outcome": "waited"}),
            ("defender_proxy_admissions_total", {"route": "machines.list", "outcome": "refused"}),
            ("defender_proxy_upstream_throttled_total", {"route": "advancedqueries.run"}),
            ("defender_proxy_upstream_failures_total", {"kind": "reset"}),
        ):
            assert _sum(exposition, name, **labels) >= 2, (name, labels)
        hints = {"route": "machines.isolate", "kind": "case"}
        assert _sum(exposition, "defender_proxy_body_hints_total", **hints) >= 2
        # Every refusal was explained from its token, under its app's label.
        for cause, app in CAUSES:
            labels = {"cause": cause, "app": app}
            assert _sum(exposition, "defender_proxy_auth_failures_total", **labels) >= 2, labels
        yield Scraped(prometheus, exposition, rules, port)
    finally:
        await prometheus.stop()
        await process.stop()
        if drain is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drain, 5)


async def test_every_panel_returns_data_from_a_real_prometheus(scraped: Scraped) -> None:
    """After mixed traffic, every panel and variable query returns data; every metric named exists."""
    exposed = _exposed(scraped.exposition)
    problems: list[str] = []
    for where, target in _targets():
        named = selectors(target["expr"])
        for metric, matchers in named:
            problems += _selector_problems(where, metric, matchers, exposed)
            has_route = any("route" in series for series in exposed.get(metric, []))
            if has_route and ("route", "=~", "$route") not in matchers:
                problems.append(f'{where}: {metric} is not filtered by route=~"$route"')
        problems += await _query_problems(scraped.prometheus, where, target)
    for name, dashboard in _dashboards():
        for variable in ("namespace", "pod", "route"):
            problems += await _variable_problems(
                scraped.prometheus, f"{name}: ${variable}", _variables(dashboard)[variable]
            )
    recorded = {rule["record"] for rule in scraped.rules if "record" in rule}
    for rule in scraped.rules:
        where = f"{RULES.name}: {rule.get('alert') or rule.get('record')}"
        for metric, matchers in selectors(rule["expr"]):
            if metric not in FROM_PROMETHEUS | recorded:
                problems += _selector_problems(where, metric, matchers, exposed)
    if scraped.rules:
        for rule in await _evaluated_rules(scraped.prometheus):
            if rule["health"] != "ok":
                problems.append(f"{RULES.name}: {rule['name']}: {rule.get('lastError')}")
    assert not problems, "\n".join(problems)


#: The alert that names each cause, and the labels it fires with beside the scrape's own.
CAUSE_ALERTS = {
    "expired": ("DefenderApiTokenExpired", {"app": "soar"}),
    "wrong_audience": ("DefenderApiWrongAudience", {"app": "soar"}),
    "missing_role": ("DefenderApiRoleMissing", {"app": "soar", "route": "machines.isolate"}),
}


async def test_each_cause_alert_goes_off_on_the_proxys_own_series(scraped: Scraped) -> None:
    """Refusals of one app's tokens for a cause, scraped from the real proxy, set the alert that
    names that cause pending (then firing once its ``for`` has run), with the app and route."""
    assert {alert for alert, _ in CAUSE_ALERTS.values()} <= {
        rule.get("alert") for rule in scraped.rules
    }
    paths = {"expired": ("GET", "/api/alerts"), "wrong_audience": ("GET", "/api/machines/1")}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for _ in range(6):
            for cause in CAUSE_ALERTS:
                method, path = paths.get(cause, ("POST", "/api/machines/3/isolate"))
                headers = {"Authorization": _authorization(SOAR, cause) or ""}
                url = f"http://127.0.0.1:{scraped.port}{path}"
                async with session.request(method, url, headers=headers) as response:
                    assert response.status in (401, 403)
    wanted = dict(CAUSE_ALERTS.values())
    found: dict[str, dict[str, str]] = {}
    async with asyncio.timeout(30):
        while set(found) != set(wanted):
            for series in await scraped.prometheus.query("ALERTS"):
                found.setdefault(series["metric"]["alertname"], series["metric"])
            found = {name: labels for name, labels in found.items() if name in wanted}
            await asyncio.sleep(0.5)
    for alert, labels in wanted.items():
        assert {key: found[alert].get(key) for key in labels} == labels, found[alert]
        assert found[alert]["namespace"] == SCRAPE_LABELS["namespace"]


async def test_a_refused_credential_sets_off_its_alerts_on_the_proxys_own_series(
    scraped: Scraped,
) -> None:
    """The listener whose secret has expired (AADSTS7000222), and whose config says it ends
    tomorrow, sets DefenderProxyTokenMintingFailing and both expiry alerts pending from the real
    proxy's series, each with its labels (promtool's tests take them on to firing)."""
    assert set(CREDENTIAL_ALERTS) <= {rule.get("alert") for rule in scraped.rules}
    found: dict[str, dict[str, str]] = {}
    async with asyncio.timeout(60):
        while set(found) != set(CREDENTIAL_ALERTS):
            for series in await scraped.prometheus.query("ALERTS"):
                name = series["metric"]["alertname"]
                if name in CREDENTIAL_ALERTS:
                    found.setdefault(name, series["metric"])
            await asyncio.sleep(0.5)
    for alert, labels in CREDENTIAL_ALERTS.items():
        assert {key: found[alert].get(key) for key in labels} == labels, found[alert]
        assert found[alert]["namespace"] == SCRAPE_LABELS["namespace"]
