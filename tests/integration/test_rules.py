"""The alert rules: promtool accepts and unit-tests them, and the PrometheusRule is their copy.

``deploy/prometheus/rules.yml`` is the one source; ``deploy/prometheus/generate.py`` makes
``deploy/base/prometheusrule.yaml`` from it. The promtool unit tests live in
``deploy/prometheus/tests/*.yml``.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from proxy import auth_cause, hints, series
from proxy.metrics import Metrics
from tests.prom import selectors

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS / "rules.yml"
UNIT_TESTS = sorted(PROMETHEUS.glob("tests/*.yml"))
PROMETHEUS_RULE = ROOT / "deploy" / "base" / "prometheusrule.yaml"
SEVERITIES = {"critical", "warning"}
_SELECTOR = re.compile(r"\b(defender_\w+)(?:\{([^}]*)\})?")
_MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
#: Labels whose values come from a closed set the proxy defines: (metric, label) -> the set.
_CLOSED = {
    ("defender_proxy_auth_failures_total", "cause"): frozenset(auth_cause.CAUSES),
    ("defender_proxy_upstream_throttled_total", "cause"): frozenset(
        {hints.CALLS, hints.CPU, hints.UNKNOWN}
    ),
}


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is required (Debian package prometheus; `make test` installs it)")
    return promtool


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate", PROMETHEUS / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_check_rules_accepts_the_rules() -> None:
    """promtool check rules finds every alert valid, with no lint warnings."""
    result = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"SUCCESS: {len(_alerts())} rules found" in output, output


def test_promtool_unit_tests_pass() -> None:
    """Every promtool unit test in deploy/prometheus/tests passes."""
    assert UNIT_TESTS, "no promtool unit tests in deploy/prometheus/tests"
    result = subprocess.run(
        [_promtool(), "test", "rules", *map(str, UNIT_TESTS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("SUCCESS") == len(UNIT_TESTS), output


def test_prometheusrule_is_what_the_generator_makes() -> None:
    """The committed PrometheusRule is byte for byte what generate.py makes from rules.yml."""
    expected = _generator().render(RULES.read_text(encoding="utf-8"))
    assert PROMETHEUS_RULE.read_text(encoding="utf-8") == expected, (
        "deploy/base/prometheusrule.yaml is stale: run python deploy/prometheus/generate.py"
    )


def test_prometheusrule_groups_equal_the_rule_file() -> None:
    """The PrometheusRule's spec.groups parse to exactly the groups of rules.yml."""
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text(encoding="utf-8"))
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES.read_text(encoding="utf-8"))


def test_generator_refuses_a_file_without_groups() -> None:
    """The generator rejects a rule file that is not a 'groups:' document."""
    with pytest.raises(ValueError, match="groups"):
        _generator().render("rules: []\n")


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    """Each alert carries a severity, a summary, a description and its README runbook anchor."""
    for alert in _alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in SEVERITIES, name
        annotations = alert["annotations"]
        assert set(annotations) == {"summary", "description", "runbook"}, name
        assert annotations["runbook"] == f"README.md#{name.lower()}"


def test_every_alert_has_its_runbook_entry() -> None:
    """The README's "Alerts and runbook" has a #### entry for each alert, and for no other."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Alerts and runbook\n", 1)[1].split("\n## ", 1)[0]
    entries = re.findall(r"^#### (\w+)$", section, re.MULTILINE)
    assert sorted(entries) == sorted(alert["alert"] for alert in _alerts())


def test_rules_use_only_metrics_and_labels_the_proxy_exports() -> None:
    """Every defender_* metric and matcher label a rule names is exported."""
    exported: dict[str, set[str]] = {}
    for metric in vars(Metrics(CollectorRegistry())).values():
        # Label names of metrics without children yet are only on the (private) wrapper.
        if isinstance(metric, MetricWrapperBase):
            suffix = "_total" if metric._type == "counter" else ""
            exported[metric._name + suffix] = set(metric._labelnames)
        elif isinstance(metric, series.Counter):
            exported[metric.name + "_total"] = set(metric.labelnames)
        elif isinstance(metric, series.Gauge | series.Histogram):
            exported[metric.name] = set(metric.labelnames)
    for alert in _alerts():
        for metric, matchers in _SELECTOR.findall(alert["expr"]):
            assert metric in exported, f"{alert['alert']}: the proxy exports no {metric}"
            labels = set(_MATCHER.findall(matchers))
            assert labels <= exported[metric], f"{alert['alert']}: {metric} has no {labels}"


def test_rules_match_only_label_values_the_proxy_counts() -> None:
    """A cause a rule matches on is one the proxy counts: a misspelt one would never fire."""
    checked = 0
    for alert in _alerts():
        for metric, matchers in selectors(alert["expr"]):
            for label, op, value in matchers:
                closed = _CLOSED.get((metric, label))
                if closed is None:
                    continue
                assert op in ("=", "=~"), f"{alert['alert']}: {metric}{{{label}{op}...}}"
                wanted = set(value.split("|")) if op == "=~" else {value}
                assert wanted <= closed, f"{alert['alert']}: {metric} has no {label} {wanted}"
                checked += 1
    assert checked, "no rule matches a cause"


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    """For every alert a promtool test expects it to fire, and one shows a series left quiet."""
    rules = {alert["alert"]: alert for alert in _alerts()}
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in UNIT_TESTS:
        unit = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert unit["rule_files"] == ["../rules.yml"], f"{path.name} must test the source file"
        for case in unit["tests"]:
            series = [_series(item["series"]) for item in case["input_series"]]
            checks = case.get("alert_rule_test", ())
            firing_here = {check["alertname"] for check in checks if check.get("exp_alerts")}
            fires |= firing_here
            for check in checks:
                name = check["alertname"]
                expected = [alert["exp_labels"] for alert in check.get("exp_alerts") or ()]
                if not expected:
                    # Quiet all along: a case in which the alert is never expected to fire.
                    if name not in firing_here:
                        quiet.add(name)
                    continue
                # Quiet beside a firing one: a series the alert reads that no alert accounts for.
                if any(
                    re.search(rf"\b{metric}\b", rules[name]["expr"])
                    and not any(_accounts_for(alert, labels) for alert in expected)
                    for metric, labels in series
                ):
                    quiet.add(name)
    assert set(rules) - fires == set(), "alerts never expected to fire"
    assert set(rules) - quiet == set(), "alerts never shown to stay quiet"


def _series(text: str) -> tuple[str, dict[str, str]]:
    metric, _, inner = text.partition("{")
    return metric.strip(), dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', inner))


def _accounts_for(alert: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels[key] == value for key, value in alert.items() if key in labels)
